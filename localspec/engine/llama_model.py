"""One GGUF model loaded through llama-cpp-python's low-level API, with one context whose KV memory holds
several independent sequences (one per prompt-cache slot).

This is the only module that touches ctypes; everything above it speaks token ids and numpy views.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from localspec.build_flags import (
    CPU_FA_SPLIT_KV,
    CPU_FA_SPLIT_KV_ENV,
    CUDA_GRAPH_KEEP_CALLS,
    CUDA_GRAPH_KEEP_ENV,
    CUDA_GRAPH_KEY,
    CUDA_GRAPH_KEY_ENV,
)
from localspec.engine.host_memory import host_buffer
from localspec.errors import ContextOverflowError, ModelLoadError

GGUF_MAGIC = b"GGUF"
_DECODE_ABORTED = 2  # llama_decode's status when its abort callback stopped it
ABORTABLE_PASS = 8  # tokens in a pass from which a cancelled request stops it part-way (see `abort_check`)
# On a CPU llama.cpp's attention takes a pass of ATTENTION_TILE tokens or more in tiles of queries, and a shorter one
# one query at a time (GGML_FA_TILE_Q), which deep in a sequence costs several times as much per token and position
# (docs/BENCHMARKS.md, session 39). Such a pass is padded to ATTENTION_TILE tokens where a fitted cost says that pays:
# a token's attention costs ONE_QUERY (one query at a time) or TILED times its other work per position of context
# before it (fitted to the Qwen2.5-Coder 0.5B; the 1.5B gains from padding at the same sizes and depths or sooner).
ATTENTION_TILE = 64
ONE_QUERY, TILED = 0.0009, 0.00035


class DecodeAborted(Exception):
    """A decode stopped part-way because `LlamaModel.abort_check` said so; the sequence holds nothing from it."""


_backend_lock = threading.Lock()
_backend_ready = False


def _ensure_backend() -> None:
    global _backend_ready
    os.environ.setdefault(CUDA_GRAPH_KEY_ENV, CUDA_GRAPH_KEY)  # (before the CUDA backend reads them, once)
    os.environ.setdefault(CUDA_GRAPH_KEEP_ENV, CUDA_GRAPH_KEEP_CALLS)
    os.environ.setdefault(CPU_FA_SPLIT_KV_ENV, CPU_FA_SPLIT_KV)
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True


# Set on a thread while llama.cpp unwinds a pass its abort check stopped: it logs that as errors, which are not.
_stopping = threading.local()


@llama_cpp.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp logs every tensor at load time to stderr; keep errors only (the daemon logs its own summary).
    wanted = level == 4 and os.environ.get("LOCALSPEC_LLAMA_LOG", "error") != "none"  # GGML_LOG_LEVEL_ERROR
    if wanted and not getattr(_stopping, "now", False):
        os.write(2, text)


_AbortCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)  # ggml_abort_callback
_NO_ABORT_CALLBACK = _AbortCallback()  # a NULL callback: llama.cpp asks nothing


def quiet_llama_logs() -> None:
    if os.environ.get("LOCALSPEC_LLAMA_LOG") != "all":
        llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))


def check_gguf_file(path: Path, role: str) -> None:
    """Fail early, with a message a user can act on, for the commonest broken-file cases."""
    if not path.exists():
        raise ModelLoadError(
            f"The {role} model file {path} does not exist. Check the path, or run "
            "`localspec models list` to see installed models."
        )
    if not path.is_file():
        raise ModelLoadError(f"The {role} model path {path} is not a file.")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(f"Cannot read the {role} model file {path}: {exc.strerror}.") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"The {role} model file {path} is not a GGUF file (it starts with {magic!r}, not "
            "b'GGUF'). It may be corrupt or still downloading; re-download it "
            "(`localspec models pull NAME`) or point to a .gguf file."
        )


def check_model_files(target: Path, draft: Path | None) -> None:
    """`check_gguf_file` for a run's pair: a command checks its files before it prints or starts anything."""
    check_gguf_file(target, "target")
    if draft is not None:
        check_gguf_file(draft, "draft")


def default_threads(whole_on_gpu: bool = False) -> int:
    """CPU threads for a model's passes where none are configured: every core, or one for a model wholly on a GPU.
    There the CPU only looks up the input tokens' embeddings, while more threads, idling hot after each pass, take
    the cores of the threads that launch the GPU's work and draft ahead: verify passes then cost more and vary
    more (docs/BENCHMARKS.md, "twenty-sixth lease")."""
    return 1 if whole_on_gpu else max(1, os.cpu_count() or 1)


def whole_on_gpu(gpu_layers: int) -> bool:
    """Whether a model loaded with `gpu_layers` (-1 = all) runs wholly on a GPU, known before loading it only for
    -1 (a count may or may not cover all of a model's layers)."""
    _ensure_backend()
    return gpu_layers < 0 and bool(llama_cpp.llama_supports_gpu_offload())


def threads_for(configured: int, gpu_layers: int) -> int:
    """The CPU threads a model loaded with `gpu_layers` computes with: `configured`, or where that is 0 the default
    for where it runs (for a command that passes the count on, as `bench` does to llama-server)."""
    return configured or default_threads(whole_on_gpu(gpu_layers))


class _ThreadpoolParams(ctypes.Structure):
    # ggml.h: struct ggml_threadpool_params (GGML_MAX_N_THREADS = 512)
    _fields_ = [
        ("cpumask", ctypes.c_bool * 512),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


_threadpools: dict[int, int] = {}
# One lock per shared pool, held during each decode: a pool computes one graph at a time, and two decodes on it
# at once (two threads driving two engines) would corrupt both. The lock turns that bug into a clear error.
_pool_in_use: dict[int, threading.Lock] = {}


def shared_threadpool(n_threads: int) -> int | None:
    """One CPU threadpool for every context of this process.

    Each llama.cpp context otherwise makes its own pool, and a pool's threads spin for a while after each
    decode: the target's idle threads then steal the cores the draft needs.
    Returns None where the library does not export the functions (then contexts keep their own pools).
    """
    with _backend_lock:
        if n_threads in _threadpools:
            return _threadpools[n_threads]
        lib_dir = _library_dir()
        try:
            base = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.*"))))
            cpu = ctypes.CDLL(str(next(lib_dir.glob("libggml-cpu.*"))))
            base.ggml_threadpool_params_default.restype = _ThreadpoolParams
            base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
            cpu.ggml_threadpool_new.restype = ctypes.c_void_p
            cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
        except (StopIteration, OSError, AttributeError):
            return None
        params = base.ggml_threadpool_params_default(n_threads)
        pool = cpu.ggml_threadpool_new(ctypes.byref(params))
        if not pool:
            return None
        _threadpools[n_threads] = pool
        _pool_in_use[int(pool)] = threading.Lock()
        return int(pool)


def shutdown() -> None:
    """Release what llama.cpp holds process-wide, in order, before the interpreter tears itself down: the shared
    CPU threadpools (in a build without OpenMP their worker threads would otherwise still run at exit), the Python
    log callback (a log line from a library destructor after Python finalised would call a freed Python function),
    then the backend.

    Call it once every model is closed, as a command's last step; loading a model afterwards starts over.
    """
    global _backend_ready
    gc.collect()  # models and sampler chains only reachable through reference cycles are freed now, not at exit
    with _backend_lock:
        if _threadpools:
            cpu = ctypes.CDLL(str(next(_library_dir().glob("libggml-cpu.*"))))
            cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
            cpu.ggml_threadpool_free.restype = None
            for pool in _threadpools.values():
                cpu.ggml_threadpool_free(pool)  # joins its worker threads
            _threadpools.clear()
        llama_cpp.llama_log_set(llama_cpp.llama_log_callback(), ctypes.c_void_p(0))  # NULL: ggml's own logger
        if _backend_ready:
            llama_cpp.llama_backend_free()
            _backend_ready = False


def _library_dir() -> Path:
    # llama-cpp-python loads its libraries from LLAMA_CPP_LIB_PATH when set (e.g. a CUDA build), else its own lib/.
    return Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")


def _attach_threadpool(ctx: llama_cpp.llama_context_p, pool: int) -> None:
    lib = llama_cpp.llama_cpp._lib  # the libllama already loaded by llama-cpp-python
    lib.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.llama_attach_threadpool.restype = None
    lib.llama_attach_threadpool(ctx, pool, pool)


class LlamaModel:
    """A loaded model plus its context. Not thread-safe: the engine drives it from one thread."""

    def __init__(
        self,
        path: Path,
        *,
        role: str,
        n_ctx_per_seq: int,
        n_seq: int = 1,
        n_threads: int = 0,
        gpu_layers: int = -1,
        n_batch: int = 512,
        vocab_only: bool = False,
        shared_cells: int | None = None,
    ) -> None:
        """shared_cells: one KV buffer of that many cells for all `n_seq` sequences (llama.cpp's unified KV), where
        sequences can share cells: copying one into another is then free (`copy_sequence`). By default each
        sequence has a buffer of its own, of `n_ctx_per_seq` cells."""
        self.path = path
        self.role = role
        check_gguf_file(path, role)
        _ensure_backend()
        quiet_llama_logs()
        model_params = llama_cpp.llama_model_default_params()
        if gpu_layers < 0:
            gpu_layers = 999 if llama_cpp.llama_supports_gpu_offload() else 0
        model_params.n_gpu_layers = gpu_layers
        model_params.vocab_only = vocab_only
        # Read the weights into memory instead of mapping the file: with a mapping, a file truncated or
        # overwritten in place while loaded (`cp new.gguf model.gguf`) kills the process with SIGBUS.
        model_params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ModelLoadError(
                f"llama.cpp could not load the {role} model {path}. The file may be truncated or corrupt, "
                "or use an architecture this llama.cpp does not support. Re-download it "
                "(`localspec models verify` checks installed files) or choose another model."
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        # Every layer and the output layer on the GPU.
        self.offloaded = bool(llama_cpp.llama_supports_gpu_offload()) and gpu_layers > int(
            llama_cpp.llama_model_n_layer(self._model)
        )
        # Tokens in the last pass when it returned logits for all of them (0 for other passes), and how many
        # passes in a row had that size. On a GPU llama.cpp runs the first pass of a new shape kernel by kernel,
        # captures a CUDA graph on the second, and replays it from the third on.
        self.last_pass_size = 0
        self.pass_streak = 0
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._pieces: dict[int, bytes] = {}
        self._ends: dict[int, bool] = {}  # whether a token ends the generation, as asked so far
        self._ctx = None
        self.n_ctx_per_seq = n_ctx_per_seq
        self.n_seq = n_seq
        self.n_batch = n_batch
        self._shared_cells = shared_cells is not None
        if vocab_only:
            return
        threads = n_threads or default_threads(self.offloaded)
        self.n_threads = threads
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = shared_cells or n_ctx_per_seq * n_seq
        ctx_params.n_batch = n_batch
        ctx_params.n_ubatch = n_batch
        ctx_params.n_seq_max = n_seq
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.kv_unified = shared_cells is not None
        ctx_params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            self.close()
            raise ModelLoadError(
                f"llama.cpp could not create a context of {ctx_params.n_ctx} tokens for the {role} model "
                f"{path} (out of memory?). Lower engine.n_ctx or engine.slots in the config."
            )
        # On a CPU a pass over a prompt chunk can take seconds; llama.cpp then asks between graph nodes whether to
        # stop, so a request cancelled meanwhile (an editor's superseded suggestion) frees the engine at once. Only
        # passes of ABORTABLE_PASS tokens or more are asked (a one-token pass is short, and the question costs a
        # Python call per node); a GPU's passes take milliseconds: nothing is asked there.
        self.abort_check: Callable[[], bool] | None = None
        self._abort_callback = _AbortCallback(self._should_abort)
        self._abortable = False
        pool = shared_threadpool(threads)
        self._pool_in_use: threading.Lock | None = None
        if pool is not None:
            _attach_threadpool(self._ctx, pool)
            self._pool_in_use = _pool_in_use[pool]
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._logits_address: int | None = None
        self._logits_view = np.empty((0, self.n_vocab), dtype=np.float32)

    # ---- vocabulary -------------------------------------------------------------------------------------------

    @property
    def vocab(self) -> llama_cpp.llama_vocab_p:
        return self._vocab

    def tokenize(self, text: str, *, add_bos: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(
            self._vocab, data, len(data), buffer, capacity, add_bos, parse_special
        )
        if count < 0:  # buffer too small: the negated count is the size needed
            capacity = -count
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buffer, capacity, add_bos, parse_special
            )
        return list(buffer[:count])

    def piece(self, token: int) -> bytes:
        """The bytes a token renders to (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            buffer = ctypes.create_string_buffer(64)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
            cached = buffer.raw[:size]
            self._pieces[token] = cached
        return cached

    def token_text(self, token: int) -> bytes:
        """The raw vocabulary entry (used to compare vocabularies)."""
        return bytes(llama_cpp.llama_vocab_get_text(self._vocab, token) or b"")

    def streak_after(self, size: int) -> int:
        """`pass_streak` once a pass of `size` tokens follows the passes so far."""
        return self.pass_streak + 1 if size == self.last_pass_size else 1

    def is_end_of_generation(self, token: int) -> bool:
        # Asked of every token settled and drafted: a call into llama.cpp costs more than a dict's lookup.
        known = self._ends.get(token)
        if known is None:
            known = self._ends[token] = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        return known

    def metadata(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1 << 16)
        size = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        if size < 0:
            return None
        if size >= len(buffer):  # chat templates can be long
            buffer = ctypes.create_string_buffer(size + 1)
            llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode("utf-8", errors="replace")

    def special_tokens(self) -> dict[str, int]:
        v = self._vocab
        return {
            "bos": llama_cpp.llama_vocab_bos(v),
            "eos": llama_cpp.llama_vocab_eos(v),
            "eot": llama_cpp.llama_vocab_eot(v),
            "fim_pre": llama_cpp.llama_vocab_fim_pre(v),
            "fim_suf": llama_cpp.llama_vocab_fim_suf(v),
            "fim_mid": llama_cpp.llama_vocab_fim_mid(v),
            "fim_rep": llama_cpp.llama_vocab_fim_rep(v),
            "fim_sep": llama_cpp.llama_vocab_fim_sep(v),
        }

    def vocab_type(self) -> int:
        return int(llama_cpp.llama_vocab_type(self._vocab))

    def adds_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def n_params(self) -> int:
        return int(llama_cpp.llama_model_n_params(self._model))

    def n_ctx_train(self) -> int:
        return int(llama_cpp.llama_model_n_ctx_train(self._model))

    # ---- decoding ---------------------------------------------------------------------------------------------

    def use_own_threads(self, n_threads: int) -> None:
        """Leave the shared CPU threadpool for `n_threads` threads of this context's own, so this model may decode
        on another Python thread while the others decode (the draft model drafting ahead, on a GPU)."""
        if self._pool_in_use is not None:
            lib = llama_cpp.llama_cpp._lib
            lib.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
            lib.llama_detach_threadpool.restype = None
            lib.llama_detach_threadpool(self.ctx)
            self._pool_in_use = None
        llama_cpp.llama_set_n_threads(self.ctx, n_threads, n_threads)

    @property
    def ctx(self) -> llama_cpp.llama_context_p:
        assert self._ctx is not None, "this model was loaded vocabulary-only"
        return self._ctx

    def decode(self, tokens: list[int], start_pos: int, seq_id: int, outputs: str | int = "last") -> int:
        """Evaluate `tokens` at positions start_pos.. in sequence `seq_id`.

        outputs: "none", "last" (logits for the final token only), "all" (one row per token; needs
        len(tokens) <= n_batch) or a number n (rows for the final n tokens, all in the last n_batch tokens).
        Returns the number of logit rows now readable through `logits()`.
        """
        tail = {"none": 0, "last": 1, "all": len(tokens)}[outputs] if isinstance(outputs, str) else outputs
        first_out = len(tokens) - tail
        if start_pos + len(tokens) > self.n_ctx_per_seq:
            raise ContextOverflowError(
                f"The {self.role} context is full ({self.n_ctx_per_seq} tokens per slot). Shorten the prompt, "
                "lower max_tokens, or raise engine.n_ctx."
            )
        batch = self._batch
        n_out = 0
        for chunk_start in range(0, len(tokens), self.n_batch):
            chunk = tokens[chunk_start : chunk_start + self.n_batch]
            at = start_pos + chunk_start
            padded = self._padded_size(len(chunk), at)
            for i in range(padded):  # (the padding repeats the last token, with no logits)
                batch.token[i] = chunk[min(i, len(chunk) - 1)]
                batch.pos[i] = at + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = chunk_start + i >= first_out and i < len(chunk)
            batch.n_tokens = padded
            n_out = sum(1 for i in range(len(chunk)) if batch.logits[i])
            size = len(chunk) if n_out == len(chunk) else 0
            self.pass_streak = self.streak_after(size)
            self.last_pass_size = size
            self._ask_to_abort(
                self.abort_check is not None and len(chunk) >= ABORTABLE_PASS and not self.offloaded
            )
            status = self._decode_on_pool(batch)
            stopped, _stopping.now = getattr(_stopping, "now", False), False
            if status == _DECODE_ABORTED and stopped:
                # Chunks decoded before the stop would stay in the KV: the sequence keeps nothing of this call.
                self.remove_from(seq_id, start_pos)
                raise DecodeAborted(f"a {self.role} model pass was stopped: its request was cancelled")
            if status == 1:
                raise ContextOverflowError(
                    f"The {self.role} model found no free KV slot for {len(chunk)} tokens; the context is full. "
                    "Shorten the prompt or raise engine.n_ctx."
                )
            if status != 0:
                raise RuntimeError(f"llama_decode failed with status {status} on the {self.role} model")
            if padded > len(chunk):
                self.remove_from(seq_id, at + len(chunk))
        return n_out

    def _padded_size(self, n: int, depth: int) -> int:
        """Tokens to decode for a pass of n tokens `depth` into its sequence: ATTENTION_TILE where padding it costs
        less on a CPU (see ONE_QUERY), else n. Only where the padding's cells are surely free (a sequence of its own
        with room after the pass)."""
        if (
            self.offloaded
            or self._shared_cells
            or not 2 <= n < ATTENTION_TILE <= self.n_batch
            or depth + ATTENTION_TILE > self.n_ctx_per_seq
        ):
            return n
        return ATTENTION_TILE if ATTENTION_TILE * (1 + TILED * depth) < n * (1 + ONE_QUERY * depth) else n

    def _decode_on_pool(self, batch: llama_cpp.llama_batch) -> int:
        in_use = self._pool_in_use
        if in_use is None:
            return int(llama_cpp.llama_decode(self._ctx, batch))
        if not in_use.acquire(blocking=False):
            raise RuntimeError(
                f"Two decodes ran at once on the shared CPU threadpool (the {self.role} model's and another): "
                "a localspec bug, since one pool computes one graph at a time. Please report it."
            )
        try:
            return int(llama_cpp.llama_decode(self._ctx, batch))
        finally:
            in_use.release()

    def _ask_to_abort(self, ask: bool) -> None:
        if ask != self._abortable:
            llama_cpp.llama_set_abort_callback(
                self._ctx, self._abort_callback if ask else _NO_ABORT_CALLBACK, None
            )
            self._abortable = ask

    def _should_abort(self, _data: ctypes.c_void_p) -> bool:
        check = self.abort_check
        stop = check is not None and check()
        if stop:
            _stopping.now = True
        return stop

    def logits(self, rows: int) -> np.ndarray:
        """A (rows, n_vocab) float32 view of the last decode's logits; valid until the next decode."""
        pointer = llama_cpp.llama_get_logits(self._ctx)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        if address != self._logits_address or rows > self._logits_view.shape[0]:
            # Making a numpy view costs more than the argmax of a row: keep one per output buffer.
            self._logits_view = np.ctypeslib.as_array(pointer, shape=(max(rows, self.n_batch), self.n_vocab))
            self._logits_address = address
        return self._logits_view[:rows]

    def synchronize(self) -> None:
        """Wait for queued GPU work (llama_decode returns before a GPU finishes), so timings are real."""
        llama_cpp.llama_synchronize(self._ctx)

    def remove_from(self, seq_id: int, position: int) -> None:
        """Drop KV entries of `seq_id` at positions >= `position` (rollback)."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, position, -1)

    def copy_sequence(self, source: int, destination: int) -> None:
        """Make sequence `destination` hold what `source` holds: with `shared_cells`, by sharing its cells (no
        copy); otherwise llama.cpp copies the whole KV buffer at the start of the next pass."""
        self.remove_from(destination, 0)
        llama_cpp.llama_memory_seq_cp(self._memory, source, destination, -1, -1)

    def sequence_bytes(self, seq_id: int) -> int:
        """The size of `save_sequence`'s copy of sequence `seq_id` now."""
        self.synchronize()
        return int(llama_cpp.llama_state_seq_get_size(self.ctx, seq_id))

    def save_sequence(self, seq_id: int, pinned: bool = False) -> np.ndarray:
        """A copy, in host memory, of everything sequence `seq_id`'s KV holds (see `restore_sequence`); in
        page-locked memory when `pinned` and the model runs on a GPU (`host_memory`)."""
        size = self.sequence_bytes(seq_id)
        buffer = host_buffer(size, pinned and self.offloaded)  # not zeroed: llama.cpp writes every byte
        written = int(llama_cpp.llama_state_seq_get_data(self.ctx, _bytes_pointer(buffer), size, seq_id))
        if written != size:
            raise RuntimeError(f"llama.cpp saved {written} of {size} bytes of the {self.role} model's KV")
        return buffer

    def restore_sequence(self, seq_id: int, state: np.ndarray) -> None:
        """Make sequence `seq_id` hold what `save_sequence` copied (from any sequence of this context)."""
        self.remove_from(seq_id, 0)
        if int(llama_cpp.llama_state_seq_set_data(self.ctx, _bytes_pointer(state), state.size, seq_id)) == 0:
            self.remove_from(seq_id, 0)
            raise RuntimeError(f"llama.cpp could not restore a saved KV sequence of the {self.role} model")

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: ctypes may already be gone
            self.close()


def _bytes_pointer(array: np.ndarray) -> Any:
    return array.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def top_two(row: np.ndarray) -> tuple[int, float]:
    """(argmax, top-1 minus top-2 logit) of a logits row, in place and without copying the row."""
    token, margin, _ = best_two(row)
    return token, margin


def best_two(row: np.ndarray) -> tuple[int, float, int]:
    """(argmax, top-1 minus top-2 logit, the second-best token) of a logits row, without copying the row."""
    token = int(np.argmax(row))
    return token, *_runner_up(row, token)


def top_two_expecting(row: np.ndarray, expected: int) -> tuple[int, float]:
    """`top_two(row)`, in one pass over the row instead of two where `expected` is its only best token (a draft
    the target takes; a verify pass's rows are mostly such): the best of the others is then the runner-up."""
    margin, rival = _runner_up(row, expected)
    if margin > 0:
        return expected, margin
    if margin < 0:  # the rival is the row's first best token (what argmax gives)
        return rival, _runner_up(row, rival)[0]
    return top_two(row)  # a tie with the expected token (a margin of 0, or NaN between infinities), or NaN


def _runner_up(row: np.ndarray, token: int) -> tuple[float, int]:
    """(row[token] minus the best other logit, that other token), without copying the row. In Python floats: a
    row whose two best are the same infinity gives NaN (`top_two_expecting` handles it) without numpy's warning."""
    top = row[token]
    row[token] = -np.inf
    runner_up = int(np.argmax(row))
    row[token] = top
    return float(top) - float(row[runner_up]), runner_up
