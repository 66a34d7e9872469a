"""Decode a few tokens in a child process before the first real load, once per llama.cpp build.

A llama.cpp built with -march=native on a VM that advertises AMX but does not permit it dies with SIGILL at the
first decode. In the daemon that would be a bare crash; here it becomes an error that says how to reinstall.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import llama_cpp

from localspec import locations
from localspec.errors import ModelLoadError

_CHILD = """
import sys
from pathlib import Path
from localspec.engine.llama_model import LlamaModel
model = LlamaModel(Path(sys.argv[1]), role="canary", n_ctx_per_seq=64, n_threads=1, gpu_layers=0, n_batch=64)
model.decode(list(range(8)), 0, 0, "last")
"""

REINSTALL = (
    'CMAKE_ARGS="$(python3 localspec/build_flags.py)" pip install --force-reinstall --no-cache-dir '
    f"--no-deps llama-cpp-python=={llama_cpp.__version__}"
)
_checked = False


def _build_key() -> str:
    library = Path(llama_cpp.llama_cpp._base_path)
    stamps = sorted(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in library.glob("lib*.so*"))
    return f"{library}|{'|'.join(stamps)}"


def ensure_llama_runs(model_path: Path) -> None:
    """Raise ModelLoadError if llama.cpp crashes on this machine; cached per llama.cpp build."""
    global _checked
    if _checked:
        return
    marker = locations.cache_dir() / "llama-canary.ok"
    key = _build_key()
    if marker.exists() and marker.read_text(encoding="utf-8") == key:
        _checked = True
        return
    try:
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(model_path)], capture_output=True, timeout=600
        )
    except subprocess.TimeoutExpired:
        return  # a slow machine is not a broken build; the real load will tell
    if child.returncode == -signal.SIGILL:
        raise ModelLoadError(
            f"llama.cpp crashed with an illegal instruction (SIGILL) while decoding with {model_path.name}: it was "
            "compiled for instructions this machine does not permit (for example AMX on a VM). Rebuild "
            f"llama-cpp-python for this CPU from the localspec checkout:\n  {REINSTALL}"
        )
    if child.returncode < 0:
        raise ModelLoadError(
            f"llama.cpp crashed ({signal.Signals(-child.returncode).name}) while loading {model_path}. The file may "
            "be corrupt: check it with `localspec models verify` or download it again."
        )
    if child.returncode == 0:  # other failures (a corrupt file) are reported by the real load
        marker.write_text(key, encoding="utf-8")
        _checked = True
