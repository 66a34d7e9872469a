"""Limits of the system that tests reach on purpose, to see what users see when their machine reaches them."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def inotify_instances_used_up() -> Iterator[None]:
    """Take inotify instances until the kernel refuses one (its per-user limit, often 128, which many editor windows
    and containers reach), and give them back after: while held, this user's new processes get none."""
    libc = ctypes.CDLL(None, use_errno=True)
    held: list[int] = []
    try:
        while (fd := libc.inotify_init1(os.O_CLOEXEC)) >= 0:
            held.append(fd)
            if len(held) > 65536:
                pytest.skip("this system's inotify instance limit is too high to reach")
        assert ctypes.get_errno() == errno.EMFILE, os.strerror(ctypes.get_errno())
        yield
    finally:
        for fd in held:
            os.close(fd)
