"""Cost-scaled copies of a target GGUF: as expensive per token as a larger model, with the original's output.

Deeper (`layers=N`): layers are appended, copied from the last one with their attention-output and FFN-down
weights zeroed. Each computes attention and a full FFN like a real layer (same kernels, same bytes read, its own
KV cache) but adds exactly 0.0 to the residual stream, so the logits are the original model's.
Wider (`ffn=M`): every FFN gets (M-1)x more intermediate units (copies of the gate/up rows) whose `ffn_down`
columns are zero, so they add exactly zero too; the model gets a larger model's matrix shapes. A GPU may sum the
longer rows in another order, so greedy outputs match the original up to near-ties.

Acceptance stays the original pair's (a real larger target agrees less with a small draft): results from such a
file are reported as "cost-scaled", never as a real model's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.gguf_reader import ReaderField, ReaderTensor

from localspec.errors import LocalspecError

# Weights zeroed in the added layers: each is the last matrix before its block's output joins the residual.
_ZEROED_IN_ADDED_LAYERS = ("attn_output.weight", "ffn_down.weight")

ProgressHook = Callable[[int, int], None]  # (bytes written so far, total bytes)


@dataclass(frozen=True)
class Scale:
    layers: int = 1  # N x the original layer count
    ffn: int = 1  # M x the original FFN width

    def __post_init__(self) -> None:
        if self.layers < 1 or self.ffn < 1:
            raise LocalspecError(
                f"Cost scaling factors must be whole numbers of at least 1 (got layers x{self.layers}, "
                f"FFN x{self.ffn})."
            )

    @property
    def identity(self) -> bool:
        return self.layers == 1 and self.ffn == 1

    def label(self) -> str:
        """How results from a scaled copy are named, e.g. "cost-scaled (x5 layers)"."""
        parts = [f"x{self.layers} layers"] * (self.layers > 1) + [f"x{self.ffn} FFN"] * (self.ffn > 1)
        return f"cost-scaled ({', '.join(parts)})"


def field_value(field: ReaderField) -> tuple[Any, GGUFValueType | None]:
    """A GGUF metadata field's value, and for an array its items' type (what `GGUFWriter.add_key_value` takes)."""
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data], sub
        return [field.parts[i].tolist()[0] for i in field.data], sub
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="surrogateescape"), None
    return field.parts[field.data[0]].tolist()[0], None


def _tensor_data(name: str, tensor: ReaderTensor, zero: bool, ffn: int) -> np.ndarray:
    # All-zero bytes decode to 0.0 in every ggml block format (float and quantized alike).
    data = np.zeros_like(tensor.data) if zero else tensor.data
    if ffn > 1 and name.endswith(("ffn_gate.weight", "ffn_up.weight")):
        data = np.concatenate([data] * ffn, axis=0)  # more rows: (units, bytes or values per row)
    elif ffn > 1 and name.endswith("ffn_down.weight"):
        padding = np.zeros((data.shape[0], data.shape[1] * (ffn - 1)), data.dtype)
        data = np.concatenate([data, padding], axis=1)
    return data


def _tensor_shape(name: str, tensor: ReaderTensor, ffn: int) -> tuple[int, ...]:
    rows, *rest = tensor.data.shape
    if ffn > 1 and name.endswith(("ffn_gate.weight", "ffn_up.weight")):
        return (rows * ffn, *rest)
    if ffn > 1 and name.endswith("ffn_down.weight"):
        return (rows, rest[0] * ffn)
    return tuple(tensor.data.shape)


def write_scaled(source: Path, destination: Path, scale: Scale, progress: ProgressHook | None = None) -> Path:
    """Write the cost-scaled copy of `source` to `destination` (through a temporary file, renamed at the end, so
    an interrupted write never leaves a file that looks complete)."""
    reader = GGUFReader(source)
    arch = str(field_value(reader.fields["general.architecture"])[0])
    block_count = f"{arch}.block_count"
    if block_count not in reader.fields or f"{arch}.feed_forward_length" not in reader.fields:
        raise LocalspecError(
            f"{source} has no {arch}.block_count / feed_forward_length: it cannot be scaled."
        )
    n_layers = int(field_value(reader.fields[block_count])[0])
    new_layers = n_layers * scale.layers
    partial = destination.with_name(destination.name + ".partial")
    writer = GGUFWriter(partial, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value, sub = field_value(field)
        if name == block_count:
            value = new_layers
        elif name == f"{arch}.feed_forward_length":
            value = value * scale.ffn
        elif name == "general.name":
            value = f"{value} ({scale.label()})"
        writer.add_key_value(name, value, field.types[0], sub_type=sub)

    last = f"blk.{n_layers - 1}."
    plan = [(t.name, t, False) for t in reader.tensors]
    for layer in range(n_layers, new_layers):
        for t in reader.tensors:
            if t.name.startswith(last):
                name = f"blk.{layer}." + t.name[len(last) :]
                plan.append((name, t, t.name.endswith(_ZEROED_IN_ADDED_LAYERS)))
    sizes = []
    for name, t, _ in plan:
        shape = _tensor_shape(name, t, scale.ffn)
        nbytes = int(np.prod(shape)) * t.data.dtype.itemsize
        writer.add_tensor_info(name, shape, t.data.dtype, nbytes, t.tensor_type)
        sizes.append(nbytes)
    total, written = sum(sizes), 0
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for (name, t, zero), size in zip(plan, sizes, strict=True):
            writer.write_tensor_data(_tensor_data(name, t, zero, scale.ffn))
            written += size
            if progress is not None:
                progress(written, total)
        writer.close()
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def cached_scaled_copy(
    source: Path, scale: Scale, folder: Path, progress: ProgressHook | None = None
) -> tuple[Path, bool]:
    """(path of the scaled copy of `source` in `folder`, whether it was written now). A copy made earlier from the
    same file (same path, size and modification time) is reused."""
    if scale.identity:
        return source, False
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    destination = folder / f"{source.stem}.layers{scale.layers}.ffn{scale.ffn}.{key}.gguf"
    if destination.is_file():
        return destination, False
    folder.mkdir(parents=True, exist_ok=True)
    return write_scaled(source, destination, scale, progress), True
