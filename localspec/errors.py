"""One small hierarchy of errors whose messages tell the user what to do next."""

from __future__ import annotations


class LocalspecError(Exception):
    """Base class: the message is a complete, actionable sentence or paragraph."""


class ModelLoadError(LocalspecError):
    """A GGUF file is missing, unreadable, corrupt, or llama.cpp refused it."""


class IncompatibleModelsError(LocalspecError):
    """Target and draft cannot be paired (different vocabularies or special tokens)."""


class ContextOverflowError(LocalspecError):
    """The prompt (plus the requested tokens) does not fit the context window."""


class InvalidRequestError(LocalspecError):
    """A request's parameters are out of range or inconsistent."""


class UnsupportedError(LocalspecError):
    """The loaded model cannot do what was asked (e.g. fill-in-the-middle without FIM tokens)."""


class ConfigError(LocalspecError):
    """The configuration file or an override is invalid."""


class DaemonUnavailableError(LocalspecError):
    """No daemon answers, and starting one failed or timed out."""


class RemoteBackendError(LocalspecError):
    """The remote inference server (engine.backend = "remote") is down, too slow, refused, or answered garbage."""
