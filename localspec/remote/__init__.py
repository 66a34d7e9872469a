"""The remote backend: an existing inference server (llama-server, vLLM, any OpenAI-compatible one) decodes,
and the daemon drives it through the same interface as the local engine (see docs/REMOTE.md)."""

from localspec.remote.backend import RemoteEngine, RemoteGeneration, RemoteSettings
from localspec.remote.stats import RemoteStats, RemoteStep

__all__ = ["RemoteEngine", "RemoteGeneration", "RemoteSettings", "RemoteStats", "RemoteStep"]
