"""The ASGI app: thin routes that parse a request, submit one job to the scheduler, and format the answer.

Build it with `create_app(settings, engine_host)`; tests and `localspec serve` use the same factory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from localspec.daemon import responses
from localspec.daemon.engine_host import EngineHost
from localspec.daemon.metrics import prometheus_text
from localspec.daemon.openapi import openapi_document
from localspec.daemon.responses import Shaper
from localspec.daemon.scheduler import Job, JobKind
from localspec.daemon.schemas import ChatBody, CompletionBody, InfillBody, validation_message
from localspec.daemon.security import GuardMiddleware
from localspec.engine.end_rules import EndRule
from localspec.engine.types import GenerationRequest, GenerationResult
from localspec.errors import (
    ContextOverflowError,
    DaemonUnavailableError,
    InvalidRequestError,
    LocalspecError,
    ModelLoadError,
    RemoteBackendError,
    UnsupportedError,
)

if TYPE_CHECKING:
    from localspec.daemon.backend import Backend

log = logging.getLogger("localspec.daemon")
Event = tuple[str, Any]
_Body = TypeVar("_Body", bound=BaseModel)


@dataclass
class AppSettings:
    token: str
    host: str = "127.0.0.1"
    allow_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 16 * 1024 * 1024
    started_at: float = field(default_factory=time.time)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def error_response(exc: BaseException) -> JSONResponse:
    if isinstance(exc, ApiError):
        status, kind, code = exc.status, "invalid_request_error", exc.code
    elif isinstance(exc, ContextOverflowError):
        status, kind, code = 400, "invalid_request_error", "context_length_exceeded"
    elif isinstance(exc, UnsupportedError):
        status, kind, code = 400, "invalid_request_error", "unsupported"
    elif isinstance(exc, RemoteBackendError):
        status, kind, code = 502, "server_error", "remote_error"
    elif isinstance(exc, DaemonUnavailableError | ModelLoadError):
        status, kind, code = 503, "server_error", "model_unavailable"
    elif isinstance(exc, InvalidRequestError | LocalspecError):
        status, kind, code = 400, "invalid_request_error", "invalid_request"
    else:
        log.error("internal error", exc_info=exc)
        status, kind, code = 500, "server_error", "internal_error"
    return JSONResponse(responses.error_body(str(exc), kind, code), status_code=status)


async def _parse(request: Request, model: type[_Body]) -> _Body:
    body = await request.body()
    if len(body) > request.app.state.settings.max_body_bytes:
        raise ApiError(413, "The request body is too large.", "body_too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.", "invalid_json") from exc
    except RecursionError as exc:
        raise ApiError(400, "The request body's JSON is nested too deeply.", "invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", "invalid_json")
    try:
        # JSON may escape lone UTF-16 surrogates ("\ud800"): valid JSON, but not text the tokenizer can encode.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(
            400,
            "The request body holds a string that is not valid Unicode (an unpaired surrogate escape such as "
            "\\ud800). Send UTF-8 text.",
            "invalid_unicode",
        ) from exc
    except RecursionError as exc:
        raise ApiError(400, "The request body's JSON is nested too deeply.", "invalid_json") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc), "invalid_request") from exc


async def _disconnected(request: Request) -> None:
    # Once the body is read, the server's receive() only returns when the client goes away.
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Watch:
    """Waits for a job's next event while watching for the client to disconnect (then cancels the job)."""

    def __init__(self, request: Request, job: Job) -> None:
        self.job = job
        self._gone = asyncio.ensure_future(_disconnected(request))

    async def next(self) -> Event | None:
        get = asyncio.ensure_future(self.job.events.get())
        done, _ = await asyncio.wait({get, self._gone}, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        self.job.cancel.cancel()
        return None

    def close(self) -> None:
        self._gone.cancel()


def _submit(
    request: Request, kind: JobKind, slot: str, prepare: Callable[[Backend], GenerationRequest], stream: bool
) -> Job:
    """Queue a generation; `stream` asks for every step's event, not just the result."""
    job = Job(kind=kind, slot=slot, prepare=prepare, loop=asyncio.get_running_loop(), stream=stream)
    return request.app.state.host.scheduler.submit(job)


def _model_name(request: Request) -> str:
    return str(request.app.state.host.health()["models"]["target"] or "localspec")


async def _stream(
    first: Event, job: Job, format_step: Callable[[Any], str | None], finish: Callable[[Any], str]
) -> AsyncIterator[str | bytes]:
    event = first
    try:
        while True:
            kind, payload = event
            if kind == "steps":  # each step its own stream chunk, sent together
                chunks = [data for step in payload if (data := format_step(step)) is not None]
                if chunks:
                    yield b"".join(ServerSentEvent(data).encode() for data in chunks)
            elif kind == "done":
                yield finish(payload)
                break
            else:
                yield bytes(error_response(payload).body).decode()
                break
            event = await job.events.get()
        yield "[DONE]"
    finally:
        job.cancel.cancel()  # the client went away (or we are done): stop within one decode step


@dataclass
class _Formats:
    """How one endpoint turns a job's events into stream chunks or one JSON body."""

    step: Callable[[Any], str | None]  # a step's stream chunk (None: nothing to send yet)
    last: Callable[[GenerationResult], str]  # the stream's final chunk
    whole: Callable[[GenerationResult], dict[str, Any]]  # the non-stream body


async def _respond(request: Request, job: Job, stream: bool, formats: _Formats) -> Response:
    watch = _Watch(request, job)
    try:
        while True:
            event = await watch.next()
            if event is None:
                return Response(status_code=499)  # the client left; nobody reads this
            kind, payload = event
            if kind == "error":
                return error_response(payload)
            if stream:
                # Errors before the first event are a plain 4xx; from here on the answer is a stream.
                return EventSourceResponse(_stream(event, job, formats.step, formats.last), ping=15)
            return JSONResponse(formats.whole(payload))  # "done": a non-stream job posts only its result
    finally:
        watch.close()


def _openai_formats(shaper: responses.Shaper) -> _Formats:
    first = [True]

    def step(event: Any) -> str:
        body = shaper.chunk(event.text, responses.speculative_step(event), first[0])
        first[0] = False
        return json.dumps(body)

    return _Formats(step, lambda r: json.dumps(shaper.last_chunk(r)), shaper.full)


async def completions(request: Request) -> Response:
    body = await _parse(request, CompletionBody)
    max_tokens = body.max_tokens or 256
    suffix = body.suffix

    def prepare(engine: Backend) -> GenerationRequest:
        prompt = body.prompt_value()
        if suffix is not None and isinstance(prompt, str):  # fill in the middle (CompletionBody says why)
            prompt = engine.infill_prompt(prompt, suffix, max_tokens=max_tokens)
        return GenerationRequest(
            prompt=prompt,
            max_tokens=max_tokens,
            sampling=body.sampling(),
            stop=body.stop_list(),
            speculative=body.speculative,
            draft_max=body.draft_max,
            # The n-gram drafter may copy from the text after the insertion point.
            lookup_texts=[] if suffix is None else [suffix],
        )

    kind: JobKind = "completion" if suffix is None else "infill"  # (an editor's, served first)
    job = _submit(request, kind, body.slot or kind, prepare, body.stream)
    return await _respond(
        request, job, body.stream, _openai_formats(Shaper("completion", _model_name(request)))
    )


async def chat_completions(request: Request) -> Response:
    body = await _parse(request, ChatBody)
    messages = body.message_dicts()

    def prepare(engine: Backend) -> GenerationRequest:
        return GenerationRequest(
            prompt=engine.chat_prompt(messages),
            max_tokens=body.token_budget(),
            sampling=body.sampling(),
            stop=body.stop_list(),
            speculative=body.speculative,
            draft_max=body.draft_max,
        )

    job = _submit(request, "chat", body.slot or "chat", prepare, body.stream)
    return await _respond(request, job, body.stream, _openai_formats(Shaper("chat", _model_name(request))))


async def infill(request: Request) -> Response:
    body = await _parse(request, InfillBody)
    extra = [(e.filename, e.text) for e in body.extra]

    max_tokens = 128 if body.max_tokens is None else body.max_tokens

    def prepare(engine: Backend) -> GenerationRequest:
        return GenerationRequest(
            # The engine cuts the prompt to what the context holds next to `max_tokens` of answer.
            prompt=engine.infill_prompt(
                body.prefix, body.suffix, extra=extra, filename=body.filename, max_tokens=max_tokens
            ),
            max_tokens=max_tokens,
            sampling=body.sampling(),
            stop=body.stop_list(),
            # Where code completion ends: the generation stops itself there (finish_reason "stop").
            end_rule=EndRule("single_line" if body.single_line else "block", body.suffix),
            speculative=body.speculative,
            draft_max=body.draft_max,
            # The n-gram drafter may copy from the code after the cursor and the other files sent along.
            lookup_texts=[body.suffix, *(text for _, text in extra)],
        )

    # A prefill runs behind every other request (see scheduler.PRIORITY).
    kind: JobKind = "prefill" if max_tokens == 0 else "infill"
    job = _submit(request, kind, body.slot or kind, prepare, body.stream)
    model = _model_name(request)

    def step(event: Any) -> str:
        return json.dumps({"content": event.text, "speculative_step": responses.speculative_step(event)})

    def last(result: GenerationResult) -> str:
        return json.dumps(responses.infill_body("", result.finish_reason, result, model))

    def whole(result: GenerationResult) -> dict[str, Any]:
        return responses.infill_body(result.text, result.finish_reason, result, model)

    return await _respond(request, job, body.stream, _Formats(step, last, whole))


async def health(request: Request) -> Response:
    return JSONResponse(request.app.state.host.health())


async def models(request: Request) -> Response:
    host: EngineHost = request.app.state.host
    info = host.model_info()
    target = host.health()["models"]["target"]
    data = []
    if target:
        data.append(
            {
                "id": target,
                "object": "model",
                "created": int(request.app.state.settings.started_at),
                "owned_by": "localspec",
                "meta": info,
            }
        )
    return JSONResponse({"object": "list", "data": data})


def _stats(request: Request) -> dict[str, Any]:
    host: EngineHost = request.app.state.host
    health_now = host.health()
    return {
        "status": health_now["status"],
        "models": health_now["models"],
        "backend": health_now["backend"],
        "uptime": round(time.time() - request.app.state.settings.started_at, 1),
        **host.scheduler.snapshot(),
    }


async def stats(request: Request) -> Response:
    return JSONResponse(_stats(request))


async def metrics(request: Request) -> Response:
    return PlainTextResponse(prometheus_text(_stats(request)), media_type="text/plain; version=0.0.4")


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(
        responses.error_body(message, "invalid_request_error", code), status_code=exc.status_code
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


def create_app(settings: AppSettings, engine_host: EngineHost) -> Starlette:
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/infill", infill, methods=["POST"]),
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    middleware = [
        Middleware(
            GuardMiddleware,
            token=settings.token,
            bound_host=settings.host,
            allow_origins=settings.allow_origins,
        )
    ]
    if settings.allow_origins:  # no CORS headers at all unless the user allowed an origin
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.allow_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, ApiError: _api_error, LocalspecError: _api_error},
    )
    app.state.settings = settings
    app.state.host = engine_host
    return app
