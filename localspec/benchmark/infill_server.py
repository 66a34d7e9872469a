"""llama-server as an editor plugin such as llama.vscode drives it: one `/infill` request per cursor state, with
the prompt cache on, and optionally `--cache-reuse` (what llama.vscode recommends). Started and stopped with
`runner.LlamaServer`, which `localspec bench` uses too."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from localspec.benchmark.runner import LlamaServer, ServerMode
from localspec.errors import InvalidRequestError

SYSTEM_MODES = ("plain", "cache-reuse", "draft")
CACHE_REUSE_CHUNK = 256  # tokens; llama.vscode's recommended `--cache-reuse 256`
DRAFT_MAX = 16


def server_modes(names: list[str], draft: Path | None) -> list[ServerMode]:
    """The llama-server set-ups to run, by name: `plain` (prompt cache only), `cache-reuse` (also reuses cached
    chunks after an edit), `draft` (cache-reuse plus the draft model)."""
    if unknown := [name for name in names if name not in SYSTEM_MODES]:
        raise InvalidRequestError(
            f"Unknown llama-server mode(s) {', '.join(unknown)}; choose from {', '.join(SYSTEM_MODES)}."
        )
    reuse = ["--cache-reuse", str(CACHE_REUSE_CHUNK)]
    modes = []
    for name in names:
        if name == "plain":
            modes.append(ServerMode(name, []))
        elif name == "cache-reuse":
            modes.append(ServerMode(name, reuse))
        elif draft is None:
            raise InvalidRequestError("The llama-server draft mode needs a draft model: give --draft.")
        else:
            draft_args = [
                "-md",
                str(draft),
                "--spec-type",
                "draft-simple",
                "--spec-draft-n-max",
                str(DRAFT_MAX),
            ]
            modes.append(ServerMode(name, [*reuse, *draft_args]))
    return modes


@dataclass
class InfillAnswer:
    text: str
    seconds: float


class InfillClient:
    """`/infill` requests to one running llama-server over a kept-alive connection (as an editor plugin keeps)."""

    def __init__(self, server: LlamaServer, max_tokens: int, timeout: float = 600.0) -> None:
        self.server = server
        self.max_tokens = max_tokens
        self._http = httpx.Client(base_url=server.url, timeout=timeout)

    def infill(
        self,
        prefix: str,
        suffix: str,
        extra: list[tuple[str, str]],
        single_line: bool,
        n_predict: int | None = None,
    ) -> InfillAnswer:
        """Greedy infill, timed from sending the request to receiving the whole answer."""
        body: dict[str, Any] = {
            "input_prefix": prefix,
            "input_suffix": suffix,
            "input_extra": [{"filename": name, "text": text} for name, text in extra],
            "n_predict": self.max_tokens if n_predict is None else n_predict,
            "cache_prompt": True,
            "temperature": 0,
            "top_k": 1,
            "samplers": ["top_k"],
        }
        if single_line:
            body["stop"] = ["\n"]
        started = time.perf_counter()
        response = self._http.post("/infill", json=body)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        return InfillAnswer(str(response.json().get("content", "")), seconds)

    def count_tokens(self, text: str) -> int:
        response = self._http.post("/tokenize", json={"content": text})
        response.raise_for_status()
        return len(response.json().get("tokens", []))

    def warm(self, extra: list[tuple[str, str]]) -> float:
        """llama.vscode's background request when files are opened: the chunks, nothing generated."""
        return self.infill("", "", extra, single_line=False, n_predict=0).seconds

    def close(self) -> None:
        self._http.close()
