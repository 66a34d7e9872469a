"""Which operation first makes a pass of n tokens compute a row other than a one-token pass does.

After the same pass over a prompt, one sequence takes a one-token pass and another a pass of n tokens starting with
that token; llama.cpp's eval callback copies every float32 node of both graphs, and the first node whose row for
that token differs is printed with the next few (name, op, shapes, largest difference). Greedy speculative output
equals the target alone's only where no node differs (`bench/batch_numerics.py` counts such rows over many
positions); this names the kernel to look at where some do.

    python bench/batch_nodes.py TARGET.gguf [--depth 600] [--sizes 2,4,8,16] [--gpu-layers -1] [--show 4]
"""

from __future__ import annotations

import argparse
import ctypes
from functools import partial
from pathlib import Path
from typing import Any

# llama_cpp before numpy (see bench/batch_numerics.py)
import llama_cpp
import numpy as np

from localspec.engine import llama_model
from localspec.engine.llama_model import LlamaModel

GGML_TYPE_F32 = 0


class GgmlTensor(ctypes.Structure):
    """The head of ggml.h's `struct ggml_tensor` (GGML_MAX_DIMS 4, GGML_MAX_SRC 10, GGML_MAX_NAME 64)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
    ]


def ggml_base() -> ctypes.CDLL:
    """libggml-base beside the libllama llama-cpp-python loaded: copies a node's data off any backend."""
    lib = ctypes.CDLL(str(next(llama_model._library_dir().glob("libggml-base.*"))))  # (as shared_threadpool)
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    lib.ggml_op_name.restype = ctypes.c_char_p
    return lib


class Recorder:
    """The eval callback: while `nodes` is a list, every float32 node's name, op, shape, strides and bytes."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.nodes: list[tuple[str, str, list[int], list[int], bytes]] | None = None
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._eval)

    def _eval(self, pointer: Any, ask: bool, _data: Any) -> bool:
        if self.nodes is None:
            return False
        tensor = ctypes.cast(pointer, ctypes.POINTER(GgmlTensor)).contents
        if ask:
            return tensor.type == GGML_TYPE_F32
        ne, nb = list(tensor.ne), list(tensor.nb)
        size = ne[3] * nb[3]
        data = ctypes.create_string_buffer(size)
        self.lib.ggml_backend_tensor_get(ctypes.addressof(tensor), data, 0, size)
        op = self.lib.ggml_op_name(tensor.op).decode()
        self.nodes.append((tensor.name.decode(), op, ne, nb, data.raw))
        return True

    def record(self, run: Any) -> list[tuple[str, str, list[int], list[int], bytes]]:
        self.nodes = []
        try:
            run()
            return self.nodes
        finally:
            self.nodes = None


def first_row(ne: list[int], nb: list[int], data: bytes, dim: int | None) -> np.ndarray:
    """The node's values for the pass's first token: index 0 along `dim` (the token dimension), or all of it."""
    array = np.lib.stride_tricks.as_strided(
        np.frombuffer(data, dtype=np.float32), shape=tuple(ne[::-1]), strides=tuple(nb[::-1])
    )
    if dim is None:
        return np.array(array)
    index: list[Any] = [slice(None)] * 4
    index[3 - dim] = 0
    return np.array(array[tuple(index)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path)
    parser.add_argument(
        "--depth", type=int, default=600, help="prompt tokens before the passes (default 600)"
    )
    parser.add_argument("--sizes", default="2,4,8,16", help="pass sizes (default 2,4,8,16)")
    parser.add_argument("--gpu-layers", type=int, default=-1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--show", type=int, default=4, help="differing nodes printed per size (default 4)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    recorder = Recorder(ggml_base())
    defaults = llama_cpp.llama_context_default_params

    def with_callback() -> Any:
        params = defaults()
        params.cb_eval = recorder.callback
        return params

    llama_cpp.llama_context_default_params = with_callback  # (read by LlamaModel as it makes its context)
    model = LlamaModel(
        args.target,
        role="target",
        n_ctx_per_seq=args.depth + max(sizes) + 8,
        n_seq=2,
        n_threads=args.threads,
        gpu_layers=args.gpu_layers,
    )
    llama_cpp.llama_context_default_params = defaults
    prompt = [(i * 37 + 11) % model.n_vocab for i in range(args.depth)]
    passes = [(i * 53 + 7) % model.n_vocab for i in range(max(sizes))]
    for seq in (0, 1):
        model.decode(prompt, 0, seq, "none")
    alone = recorder.record(partial(model.decode, passes[:1], args.depth, 0, "last"))
    model.remove_from(0, args.depth)
    print(f"{args.target.name}, {args.depth} tokens deep: {len(alone)} float32 nodes in a one-token pass")
    for size in sizes:
        together = recorder.record(partial(model.decode, passes[:size], args.depth, 1, "all"))
        model.remove_from(1, args.depth)
        shown = 0
        for (name, op, ne1, nb1, data1), (other, _, ne2, nb2, data2) in zip(alone, together, strict=False):
            if name != other:
                print(f"  {size} tokens: the graphs part at node {name!r} / {other!r}; stopped comparing")
                break
            dims = [d for d in range(4) if ne1[d] != ne2[d]]
            dim = dims[0] if dims else None
            one, first = first_row(ne1, nb1, data1, dim), first_row(ne2, nb2, data2, dim)
            if one.shape == first.shape and np.array_equal(one, first):
                continue
            difference = np.abs(one - first).max() if one.shape == first.shape else float("nan")
            print(f"  {size} tokens: {name} ({op}) {ne1} / {ne2}: largest difference {difference:.3g}")
            shown += 1
            if shown == args.show:
                break
        if shown == 0:
            print(f"  {size} tokens: every node's row is the one-token pass's, bit for bit")
    model.close()


if __name__ == "__main__":
    main()
