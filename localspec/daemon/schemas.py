"""Request bodies of the HTTP API as pydantic models: bad input becomes a 400 naming the field.

Unknown OpenAI fields (user, presence_penalty, ...) are ignored so stock clients work; the ones we read are
checked. A field that asks for something the daemon does not do (log-probabilities, tool calls, JSON output) is
refused with a 400 that says so, rather than answered as if it had been done.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from localspec.config import DRAFT_MAX_LIMIT
from localspec.engine.types import SamplingParams

SpeculativeField = Literal["adaptive", "draft", "ngram", "none"] | None
SLOT_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Sampling(_Body):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1, le=131072)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    top_k: Annotated[int, Field(ge=0, le=1000)] = 40
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    repeat_penalty: Annotated[float, Field(gt=0.0, le=5.0)] = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: Annotated[int, Field(ge=1, le=1)] = 1
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    # localspec extensions
    speculative: SpeculativeField = None
    # At most the daemon's speculative.draft_max: the engine rejects more, naming the limit.
    draft_max: Annotated[int, Field(ge=0, le=DRAFT_MAX_LIMIT)] | None = None
    slot: Annotated[str, Field(pattern=SLOT_PATTERN)] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise ValueError(
                "log-probabilities are not supported: localspec returns the text and no per-token log-probabilities; "
                "leave this field out"
            )
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            seed=self.seed,
        )


class CompletionBody(_Sampling):
    # A string, a one-string list, or token ids.
    prompt: str | list[str] | list[int]
    max_tokens: Annotated[int, Field(ge=1, le=131072)] | None = 256
    # The text after the insertion point: the prompt is then the text before it, completed in the middle with the
    # model's fill-in-the-middle tokens (as OpenAI's and Ollama's `suffix`).
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] = 1

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list) and value and isinstance(value[0], str) and len(value) != 1:
            raise ValueError("batched prompts are not supported; send one prompt per request")
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix_with_text(cls, value: str | None, info: ValidationInfo) -> str | None:
        prompt = info.data.get("prompt")
        if value is not None and isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            raise ValueError(
                "a suffix needs the prompt as text (the text before the insertion point), not token ids"
            )
        return value

    def prompt_value(self) -> str | list[int]:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            return str(self.prompt[0])
        return self.prompt  # type: ignore[return-value]


class _ContentPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[_ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: object) -> object:
        if isinstance(value, list):
            kinds = {str(part.get("type")) for part in value if isinstance(part, dict)} - {"text"}
            if kinds:
                named = ", ".join(sorted(kinds))
                raise ValueError(
                    f"only parts of type 'text' are supported (the models read text), not {named}; send the "
                    "message's text alone"
                )
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatBody(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=131072)] | None = None
    tool_choice: object = None
    tools: list[object] | None = None
    functions: list[object] | None = None  # (OpenAI's older name for tools)
    response_format: dict[str, object] | None = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[object] | None, info: ValidationInfo) -> list[object] | None:
        if value and info.data.get("tool_choice") != "none":
            raise ValueError(
                "tool calls are not supported: localspec answers in text and never calls a tool; leave "
                '`tools` out (or send tool_choice "none")'
            )
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, object] | None) -> dict[str, object] | None:
        if value is not None and value.get("type", "text") != "text":
            raise ValueError(
                f"response_format {value.get('type')!r} is not supported: localspec does not constrain its output "
                'to JSON; leave response_format out (or {"type": "text"}) and ask for JSON in the prompt'
            )
        return value

    def token_budget(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 1024

    def message_dicts(self) -> list[dict[str, str]]:
        # Chat templates know system/user/assistant; "developer" is OpenAI's new name for "system".
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


class ExtraFile(_Body):
    filename: Annotated[str, Field(max_length=4096)]
    text: str


class InfillBody(_Sampling):
    prefix: str
    suffix: str = ""
    extra: Annotated[list[ExtraFile], Field(max_length=64)] = []
    filename: Annotated[str, Field(max_length=4096)] | None = None
    # 0: evaluate the prompt into the cache and generate nothing (an editor warming a place it may need soon).
    max_tokens: Annotated[int, Field(ge=0, le=4096)] | None = 128
    single_line: bool = False


def validation_message(exc: ValidationError) -> str:
    """One readable sentence per problem: `max_tokens: Input should be greater than or equal to 1`."""
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{location}: {error['msg']}")
    return (
        "Invalid request: " + "; ".join(parts[:8]) + ("" if len(parts) <= 8 else f" (+{len(parts) - 8} more)")
    )
