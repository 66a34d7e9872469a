"""The HTTP API's OpenAPI 3.1 document, built from the same pydantic models that validate request bodies.

Served at GET /openapi.json (with the token, like every route but /health) for API explorers and fuzzers.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from localspec import __version__
from localspec.daemon.schemas import ChatBody, CompletionBody, InfillBody

_REF = "#/components/schemas/{model}"
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERRORS = {
    str(status): {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
    }
    for status, text in [
        (400, "Invalid request (the message names the field)"),
        (401, "Missing or wrong bearer token"),
        (403, "Foreign Host header or browser Origin"),
        (413, "Request body too large"),
        (503, "No model loaded"),
    ]
}
_POSTS: list[tuple[str, type[BaseModel], str]] = [
    ("/v1/completions", CompletionBody, "Text completion (OpenAI shape; stream=true for SSE)"),
    ("/v1/chat/completions", ChatBody, "Chat completion (OpenAI shape; stream=true for SSE)"),
    ("/v1/infill", InfillBody, "Fill-in-the-middle code completion"),
]
_GETS = [
    ("/health", "Daemon and model status (no token needed)", "application/json"),
    ("/v1/models", "The loaded model (OpenAI shape)", "application/json"),
    ("/v1/stats", "Request counters and the engine's cumulative speculative stats", "application/json"),
    ("/metrics", "Prometheus metrics", "text/plain"),
]


@cache
def openapi_document() -> dict[str, Any]:
    _, top = models_json_schema([(model, "validation") for _, model, _ in _POSTS], ref_template=_REF)
    schemas: dict[str, Any] = {**top.get("$defs", {}), "Error": _ERROR}
    paths: dict[str, Any] = {}
    for path, summary, media in _GETS:
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": {media: {"schema": {}}}}, **_ERRORS},
        }
        if path == "/health":
            operation["security"] = []
        paths[path] = {"get": operation}
    for path, model, summary in _POSTS:
        paths[path] = {
            "post": {
                "summary": summary,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}},
                },
                "responses": {
                    "200": {
                        "description": "The answer, or an SSE stream of chunks when stream=true",
                        "content": {"application/json": {"schema": {}}, "text/event-stream": {"schema": {}}},
                    },
                    **_ERRORS,
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "localspec daemon", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
