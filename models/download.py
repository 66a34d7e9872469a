"""Byte-level download machinery: resumable HTTP into a `.part` file, checksums, free-space checks.

Nothing here knows the catalog; `install.py` decides which URL to fetch into which file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from localspec.models.errors import DiskSpaceError, DownloadError

if TYPE_CHECKING:
    import httpx

CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
USER_AGENT = "localspec (model manager)"


class Progress(Protocol):
    """Where long operations report; the CLI draws rich bars, library callers may pass NullProgress."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None: ...

    def advance(self, amount: int) -> None: ...

    def note(self, message: str) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def finish(self) -> None:
        pass


def human_size(n: int | float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{value:.2f} TB"


def check_free_space(directory: Path, needed: int, min_free_bytes: int, what: str) -> None:
    """Refuse before writing anything if `needed` more bytes would leave less than the reserve free."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free - needed < min_free_bytes:
        raise DiskSpaceError(
            f"Not enough disk space for {what}: it needs {human_size(needed)} in {directory}, which has "
            f"{human_size(free)} free, and models.min_free_gb keeps {human_size(min_free_bytes)} free. "
            "Free some space, or move models to a bigger disk with `models.dir` in config.toml "
            "(or LOCALSPEC_MODELS_DIR); lower the reserve with LOCALSPEC_MODELS_MIN_FREE_GB if you are sure."
        )


def sha256_file(path: Path, progress: Progress | None = None, description: str = "") -> str:
    progress = progress or NullProgress()
    digest = hashlib.sha256()
    progress.start(description or f"checking {path.name}", path.stat().st_size)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK * 4):
            digest.update(chunk)
            progress.advance(len(chunk))
    progress.finish()
    return digest.hexdigest()


def part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def _sidecar(part: Path) -> Path:
    # Which URL and checksum a `.part` belongs to, so a resume never splices two different files.
    return part.with_name(part.name + ".json")


def read_part_origin(part: Path) -> dict[str, str]:
    try:
        data = json.loads(_sidecar(part).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_part_origin(part: Path, url: str, sha256: str | None) -> None:
    _sidecar(part).write_text(json.dumps({"url": url, "sha256": sha256 or ""}), encoding="utf-8")


def discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)


def _server_sha256(response: httpx.Response) -> str | None:
    """Hugging Face reports an LFS file's SHA-256 as X-Linked-Etag on the resolve redirect."""
    for r in [*response.history, response]:
        tag = r.headers.get("x-linked-etag", "").removeprefix("W/").strip('"').lower()
        if _SHA256.fullmatch(tag):
            return tag
    return None


def _http_failure(url: str, response: httpx.Response) -> DownloadError:
    code = response.status_code
    if code in (401, 403):
        why = "refused access (a gated or private repository needs a token: set HF_TOKEN or `hf auth login`)"
    elif code == 404:
        why = "has no such file (the catalog entry may be outdated)"
    elif code >= 500:
        why = "had a server error; try again later"
    else:
        why = f"answered HTTP {code}"
    return DownloadError(f"{url} {why} (HTTP {code}).")


def http_download(
    url: str,
    part: Path,
    *,
    expected_sha256: str | None,
    min_free_bytes: int,
    progress: Progress,
    description: str,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[str, str | None]:
    """Download `url` into `part`, resuming what is there if it came from the same file.

    Returns (sha256 of the whole file, sha256 the server vouched for or None). Network failures raise
    DownloadError and leave the `.part` in place so the next attempt resumes.
    """
    import httpx  # imported here so that `localspec --help` does not pay for it

    origin = read_part_origin(part)
    same_file = origin.get("url") == url or (
        expected_sha256 is not None and origin.get("sha256") == expected_sha256
    )
    start = part.stat().st_size if part.exists() and same_file else 0
    if part.exists() and not start:
        discard_part(part)
    digest = hashlib.sha256()
    if start:
        # Hash the bytes already here so the final checksum covers the whole file.
        progress.start(f"{description}: checking {human_size(start)} already downloaded", start)
        with part.open("rb") as fh:
            while chunk := fh.read(CHUNK * 4):
                digest.update(chunk)
                progress.advance(len(chunk))
        progress.finish()
    # identity: byte offsets (Range, Content-Length) must count the file's own bytes, not a compressed stream.
    request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
    if start:
        request_headers["Range"] = f"bytes={start}-"
    client = httpx.Client(
        follow_redirects=True, trust_env=True, timeout=httpx.Timeout(timeout, connect=min(timeout, 20.0))
    )
    try:
        with client, client.stream("GET", url, headers=request_headers) as response:
            server_sha = _server_sha256(response)
            if start and server_sha and origin.get("sha256") and origin["sha256"] != server_sha:
                response.close()  # the remote file changed since the partial download: start over
                discard_part(part)
                return http_download(
                    url,
                    part,
                    expected_sha256=expected_sha256,
                    min_free_bytes=min_free_bytes,
                    progress=progress,
                    description=description,
                    headers=headers,
                    timeout=timeout,
                )
            if response.status_code == 416 and start:
                # Nothing left to send: the partial file is already complete (the checksum decides).
                return digest.hexdigest(), server_sha or origin.get("sha256") or None
            if response.status_code not in (200, 206):
                raise _http_failure(url, response)
            if response.status_code == 200 and start:
                start, digest = 0, hashlib.sha256()  # the server ignored Range: take the whole file
            remaining = int(response.headers.get("content-length", "0")) or None
            if remaining:
                check_free_space(part.parent, remaining, min_free_bytes, description)
            write_part_origin(part, url, expected_sha256 or server_sha)
            total = start + remaining if remaining else None
            progress.start(description, total, completed=start)
            with part.open("ab" if start else "wb") as out:
                for chunk in response.iter_bytes():  # as received: a dropped connection keeps every byte
                    out.write(chunk)
                    digest.update(chunk)
                    progress.advance(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            progress.finish()
            received = part.stat().st_size
            if total is not None and received != total:
                raise DownloadError(f"{url} ended early: got {human_size(received)} of {human_size(total)}.")
            return digest.hexdigest(), server_sha
    except httpx.HTTPError as exc:
        progress.finish()
        have = part.stat().st_size if part.exists() else 0
        kept = (
            f" {human_size(have)} are kept in {part.name} and the next pull resumes from there."
            if have
            else ""
        )
        raise DownloadError(
            f"{url} failed: {type(exc).__name__}: {str(exc) or 'connection problem'}.{kept}"
        ) from exc
