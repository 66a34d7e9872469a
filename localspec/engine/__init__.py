"""The speculative decoding engine: a library with no knowledge of HTTP, terminals or editors."""

from localspec.engine.end_rules import EndRule
from localspec.engine.engine import Engine, EngineSettings
from localspec.engine.speculative import Generation
from localspec.engine.types import (
    CancelToken,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    RequestStats,
    SamplingParams,
    StepEvent,
)

__all__ = [
    "CancelToken",
    "EndRule",
    "Engine",
    "EngineSettings",
    "Generation",
    "GenerationRequest",
    "GenerationResult",
    "ModelInfo",
    "RequestStats",
    "SamplingParams",
    "StepEvent",
]
