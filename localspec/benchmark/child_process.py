"""Processes a benchmark starts (its own daemon, llama-server) end with it, however it ends."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def ends_with_this_process() -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the kernel sends the child SIGTERM when this process ends, killed
    included, so that a benchmark stopped with `kill` or by a CI timeout leaves no daemon or llama-server holding
    the GPU's memory. Linux only (prctl PR_SET_PDEATHSIG): None elsewhere, where only a clean exit stops them.

    The kernel ties it to the thread that starts the child: start such children on the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # (looked up here: the forked child only calls it)
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # this process ended before the request was made
            os._exit(1)

    return in_child
