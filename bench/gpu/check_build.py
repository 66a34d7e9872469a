"""The setup's check of a CUDA build made elsewhere (`build-here.sh`): llama.cpp puts a tiny model's every layer on
the GPU and decodes with it. A build whose libraries load can still lack what this GPU runs (its kernels' target
architecture, the driver's entry points): the setup then builds here instead of failing the lease's first run.
Run by setup.sh with PYTHONPATH=/tmp/site and LLAMA_CPP_LIB_PATH / LD_LIBRARY_PATH at the build's bin folder."""

import sys
import tempfile
from pathlib import Path

import llama_cpp  # (before numpy, which tiny_models imports: bench/gpu/README.md)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from tiny_models import TinySpec, write_tiny_model  # (the tests' GGUF writer)

SPEC = TinySpec(n_embd=256, n_ff=512)  # (heads of 64: a size every attention kernel has)

if not llama_cpp.llama_supports_gpu_offload():
    sys.exit("this build puts nothing on a GPU")
with tempfile.TemporaryDirectory() as folder:
    path = write_tiny_model(Path(folder) / "tiny.gguf", SPEC)
    model = llama_cpp.Llama(str(path), n_gpu_layers=-1, verbose=False)
    model("ab", max_tokens=8, temperature=0)
print("the build decodes on the GPU")
