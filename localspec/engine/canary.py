"""Decode a few tokens of a tiny built-in model in a child process before the first real load, once per
llama.cpp build.

A llama.cpp built with -march=native on a VM that advertises AMX but does not permit it dies with SIGILL at the
first decode. In the daemon that would be a bare crash; here it becomes an error that says how to reinstall.
The check needs the build, not the user's model: it writes a model of a few megabytes whose matrices use the
quantized types the CPU kernels (AMX included) handle, so it costs no RAM even when the target is a 32B model.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import llama_cpp

from localspec import locations
from localspec.errors import ModelLoadError

log = logging.getLogger("localspec.engine")

_CHILD = "from localspec.engine.canary import decode_a_tiny_model; decode_a_tiny_model()"

REINSTALL = (
    'CMAKE_ARGS="$(python3 localspec/build_flags.py)" pip install --force-reinstall --no-cache-dir '
    f"--no-deps llama-cpp-python=={llama_cpp.__version__}"
)
_checked = False


def write_canary_model(path: Path) -> Path:
    """A two-layer llama GGUF with a byte-level vocabulary and Q4_0 / Q8_0 / F32 weights (seeded, ~1 MB)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    n_embd, n_ff, n_head, n_layer = 256, 512, 4, 2
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("localspec-canary")
    writer.add_context_length(256)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([int(t) for t in types])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    q4, q8 = gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q8_0
    shapes = {"token_embd.weight": (len(tokens), n_embd, q8), "output.weight": (len(tokens), n_embd, q8)}
    for i in range(n_layer):
        for part in ("q", "k", "v", "output"):
            shapes[f"blk.{i}.attn_{part}.weight"] = (n_embd, n_embd, q4)
        shapes |= {
            f"blk.{i}.ffn_gate.weight": (n_ff, n_embd, q8),
            f"blk.{i}.ffn_up.weight": (n_ff, n_embd, q8),
            f"blk.{i}.ffn_down.weight": (n_embd, n_ff, q4),
        }
    for name, (rows, cols, qtype) in shapes.items():
        weights = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
        writer.add_tensor(name, gguf.quants.quantize(weights, qtype), raw_dtype=qtype)
    norms = ["output_norm.weight"] + [
        f"blk.{i}.{n}_norm.weight" for i in range(n_layer) for n in ("attn", "ffn")
    ]
    for name in norms:
        writer.add_tensor(name, np.ones(n_embd, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def decode_a_tiny_model() -> None:
    """The child's work: write the canary model and decode with it on the CPU."""
    from localspec.engine.llama_model import LlamaModel

    with tempfile.TemporaryDirectory(prefix="localspec-canary-") as folder:
        path = write_canary_model(Path(folder) / "canary.gguf")
        model = LlamaModel(path, role="canary", n_ctx_per_seq=64, n_threads=1, gpu_layers=0, n_batch=64)
        model.decode(list(range(3, 11)), 0, 0, "last")
        model.close()


def _build_key() -> str:
    library = Path(llama_cpp.llama_cpp._base_path)
    stamps = sorted(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in library.glob("lib*.so*"))
    return f"{library}|{'|'.join(stamps)}"


def ensure_llama_runs() -> None:
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
        child = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, timeout=600)
    except subprocess.TimeoutExpired:
        return  # a slow machine is not a broken build; the real load will tell
    if child.returncode == -signal.SIGILL:
        raise ModelLoadError(
            "llama.cpp crashed with an illegal instruction (SIGILL) while decoding: it was compiled for "
            "instructions this machine does not permit (for example AMX on a VM). Rebuild llama-cpp-python "
            f"for this CPU from the localspec checkout:\n  {REINSTALL}"
        )
    if child.returncode == -signal.SIGKILL:
        # Killed from outside (the out-of-memory killer, or a user): says nothing about the build. Check again
        # next time; the real load reports its own failures.
        log.warning("the llama.cpp start-up check was killed (SIGKILL); skipping it this time")
        return
    if child.returncode < 0:
        raise ModelLoadError(
            f"llama.cpp crashed ({signal.Signals(-child.returncode).name}) while decoding a tiny built-in model: "
            "this llama.cpp build does not run on this machine. Rebuild llama-cpp-python from the localspec "
            f"checkout:\n  {REINSTALL}"
        )
    _checked = True
    if child.returncode == 0:
        marker.write_text(key, encoding="utf-8")
    else:  # the check itself failed (a Python error): not the build's fault; the real load will tell
        log.warning("the llama.cpp start-up check failed: %s", child.stderr.decode(errors="replace")[-500:])
