"""Editor latency: how long an inline suggestion takes to appear after the cursor moves and pauses.

A real LSP client (pygls) drives the real `localspec lsp` process, which talks to a real `localspec serve`. The
client opens source files, waits until the server has pre-processed them, then plays scenarios: jumping to a
place inside a file (the rest of that line deleted, as when rewriting it), jumping to another open file, typing
along a shown suggestion and typing against it. Every cursor state is recorded, and llama-server's `/infill`
(`infill_server`) replays the same states with the prompt windows the language server builds
(`localspec.lsp.prompt.build_prompt`) and the extra chunks llama.vscode would keep (`ChunkRing`).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsprotocol import types

from localspec.benchmark.daemon_process import DaemonProcess, home_env
from localspec.benchmark.editor_places import SOURCE_EXTENSIONS, PlacePicker, choose_files, find_sources
from localspec.benchmark.editor_report import Sample, print_report, summarize
from localspec.benchmark.infill_server import InfillClient
from localspec.errors import LocalspecError
from localspec.lsp.context_chunks import ChunkRing
from localspec.lsp.prompt import build_prompt
from localspec.lsp.settings import LspSettings
from localspec.lsp.text_edits import position_at

LINE_MODES = ("single", "multi")
TYPED_CHARS = 4
FALLBACK_AGAINST = ("x = ", "q = ")
# The most an LSP request may take. Awaited under `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` drops
# a cancellation (Ctrl-C) that arrives as its answer does, and the benchmark ran on.
REQUEST_TIMEOUT_S = 300.0
QUIET_POLL_S = 0.02
# What a sample keeps of the daemon's record of a generation.
DAEMON_FIELDS = (
    "id",
    "kind",
    "finish_reason",
    "prompt_tokens",
    "cached_tokens",
    "tokens",
    "drafted",
    "accepted",
    "seconds",
    "time",
)
WARM_POLL_S = 0.2
# The warm-up fails early once its pace (measured over at least WARM_PACE_PAGES pages and WARM_PACE_S seconds) says
# it needs more than WARM_OVERRUN times --warm-timeout: two big files take a 2-core CPU a quarter of an hour.
WARM_PACE_PAGES = 5
WARM_PACE_S = 60.0
WARM_OVERRUN = 1.5


@dataclass(frozen=True)
class BenchOptions:
    sources: list[Path]
    target: Path
    draft: Path | None
    files: int = 3
    min_lines: int = 200
    jumps: int = 20
    line_modes: tuple[str, ...] = LINE_MODES
    max_tokens: int = 64
    seed: int = 0
    threads: int = 1
    gpu_layers: int = -1
    n_ctx: int = 4096
    warm_timeout: float = 1800.0
    llama_server: Path | None = None
    server_modes: tuple[str, ...] = ("plain", "cache-reuse")
    daemon_config: Path | None = None  # the benchmark daemon's config.toml
    # Set where the target is a cost-scaled copy (`cli.cost_scaling.describe`).
    cost_scaled: dict[str, Any] | None = None
    target_label: str = ""  # how the report's titles name the target (default: its file's name)


def lsp_options(line_mode: str, max_tokens: int) -> dict[str, Any]:
    """What the benchmark's editor sends at initialize. No debounce: the time measured is the server's own.
    The daemon is the benchmark's own, so the server must not start another."""
    return {"debounceMs": 0, "maxTokens": max_tokens, "lineMode": line_mode, "autoStartDaemon": False}


# ---- the editor --------------------------------------------------------------------------------------------------


@dataclass
class _Document:
    uri: str
    name: str  # as the language server names it to the model: relative to the workspace folder
    text: str
    version: int = 1


@dataclass
class _Answer:
    text: str
    seconds: float
    extra: list[tuple[str, str]]  # the chunks llama-server gets for this state
    failed: bool
    server_seconds: float | None  # the language server's own time for it (its `last_latency_ms`)


class Editor:
    """An LSP client playing an editor: keeps its documents' text, sends edits and timed inline requests."""

    def __init__(
        self, home: Path, root: Path, settings: LspSettings, line_mode: str, max_tokens: int
    ) -> None:
        from pygls.lsp.client import LanguageClient

        self.home = home
        self.root = root
        self.settings = settings
        self.options = lsp_options(line_mode, max_tokens)
        self.client = LanguageClient("localspec-bench-editor", "1")
        self.documents: dict[Path, _Document] = {}
        self.last_daemon_job = 0  # the newest daemon job a sample has accounted for
        self.ring = ChunkRing(
            settings.ring_chunks, settings.chunk_lines
        )  # the chunks llama.vscode would keep
        self.warnings: list[str] = []
        self._failures = 0

        @self.client.feature(types.WINDOW_LOG_MESSAGE)
        def log_message(params: types.LogMessageParams) -> None:
            if params.type in (types.MessageType.Error, types.MessageType.Warning):
                self.warnings.append(params.message)

        @self.client.feature(types.WINDOW_SHOW_MESSAGE)
        def show_message(params: types.ShowMessageParams) -> None:
            pass  # the stats command shows a summary; the benchmark reads its result instead

    async def start(self) -> None:
        await self.client.start_io(
            sys.executable, "-m", "localspec", "lsp", "--log-level", "ERROR", env=home_env(self.home)
        )
        capabilities = types.ClientCapabilities(
            general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
            text_document=types.TextDocumentClientCapabilities(
                synchronization=types.TextDocumentSyncClientCapabilities(did_save=True),
                inline_completion=types.InlineCompletionClientCapabilities(),
            ),
        )
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await self.client.initialize_async(
                types.InitializeParams(
                    capabilities=capabilities,
                    root_uri=self.root.as_uri(),
                    workspace_folders=[types.WorkspaceFolder(uri=self.root.as_uri(), name=self.root.name)],
                    initialization_options=self.options,
                )
            )
        self.client.initialized(types.InitializedParams())

    async def stop(self) -> None:
        if not self.client.stopped:
            try:
                async with asyncio.timeout(30):
                    await self.client.shutdown_async(None)
                self.client.exit(None)
            except (TimeoutError, RuntimeError, OSError):
                server = self.client._server
                if server is not None and server.returncode is None:
                    server.kill()
            async with asyncio.timeout(30):
                await self.client.stop()

    def open(self, path: Path, text: str) -> None:
        name = path.relative_to(self.root).as_posix()
        document = _Document(path.as_uri(), name, text)
        self.documents[path] = document
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=document.uri,
                    language_id=SOURCE_EXTENSIONS.get(path.suffix, "plaintext"),
                    version=1,
                    text=text,
                )
            )
        )
        self.ring.add(name, text, 0)

    def edit(self, document: _Document, start: int, end: int, new_text: str) -> None:
        """Replace document.text[start:end] with `new_text`, as an incremental change."""
        old = document.text
        document.version += 1
        change = types.TextDocumentContentChangePartial(
            range=types.Range(start=position_at(old, start), end=position_at(old, end)), text=new_text
        )
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(
                    uri=document.uri, version=document.version
                ),
                content_changes=[change],
            )
        )
        document.text = old[:start] + new_text + old[end:]

    async def suggest(self, document: _Document, offset: int) -> _Answer:
        """The inline suggestion at `offset`, timed from request to answer."""
        extra = self.ring.extra(exclude=document.name, max_chars=self.settings.extra_max_chars)
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=document.uri),
            position=position_at(document.text, offset),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        started = time.perf_counter()
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            result = await self.client.text_document_inline_completion_async(params)
        seconds = time.perf_counter() - started
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        text = ""
        if items:
            insert = items[0].insert_text
            text = insert if isinstance(insert, str) else insert.value
        # An empty answer is also what a failed suggestion gives: the server's counters tell them apart.
        counters = (await self.stats()).get("suggestions", {})
        failures = int(counters.get("errors", 0)) + int(counters.get("unavailable", 0))
        failed, self._failures = failures > self._failures, failures
        server_ms = counters.get("last_latency_ms")
        return _Answer(text, seconds, extra, failed, None if server_ms is None else float(server_ms) / 1000)

    async def daemon_records(self, daemon: DaemonProcess) -> list[dict[str, Any]]:
        """The daemon's records of the generations that finished since the last call, oldest first."""
        finished = await asyncio.to_thread(daemon.finished_since, self.last_daemon_job)
        if finished:
            self.last_daemon_job = max(int(entry["id"]) for entry in finished)
        return finished

    async def stats(self) -> dict[str, Any]:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            result = await self.client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="localspec.stats")
            )
        return dict(result or {})


# ---- the scenarios -----------------------------------------------------------------------------------------------


Progress = Callable[[str], None]


async def wait_warm(editor: Editor, daemon: DaemonProcess, timeout: float, progress: Progress) -> float:
    """Seconds until the language server has pre-processed the open files (`warming` 0) and the daemon is idle.
    Fails early where the pace so far says the warm-up cannot end within `timeout` (big files on a CPU)."""
    started = time.monotonic()
    last_report = 0.0
    first_left: int | None = None
    while True:
        stats = await editor.stats()
        warming = int(stats.get("warming", 0) or 0)
        daemon_idle = await asyncio.to_thread(daemon.idle)
        elapsed = time.monotonic() - started
        if warming == 0 and daemon_idle and not stats.get("in_flight"):
            return elapsed
        first_left = warming if first_left is None else max(first_left, warming)
        needed = warm_up_estimate(elapsed, first_left, warming)
        if elapsed > timeout or (needed is not None and needed > WARM_OVERRUN * timeout):
            pace = "" if needed is None else f"; at its pace so far it needs ~{needed / 60:.0f} min in all"
            raise LocalspecError(
                f"The language server was still warming up after {elapsed:.0f} s ({warming} pages left{pace}). "
                f"Raise --warm-timeout (now {timeout:g} s), or open fewer or shorter files (--files, --min-lines)."
            )
        if elapsed - last_report >= 5:
            last_report = elapsed
            state = "idle" if daemon_idle else "busy"
            left = "" if needed is None else f", ~{max(0.0, needed - elapsed) / 60:.0f} min left"
            progress(f"warming up: {warming} pages left, daemon {state}, {elapsed:.0f} s{left}")
        await asyncio.sleep(WARM_POLL_S)


def warm_up_estimate(elapsed: float, first_left: int, left: int) -> float | None:
    """Seconds the whole warm-up takes at the pace so far (pages warmed per second), once enough has been seen
    to tell: at least WARM_PACE_PAGES pages and WARM_PACE_S seconds."""
    done = first_left - left
    if done < WARM_PACE_PAGES or elapsed < WARM_PACE_S:
        return None
    return elapsed * first_left / done


async def wait_quiet(editor: Editor, daemon: DaemonProcess) -> None:
    """The user's pause before the next move: the server's background work (pre-computing the follow-up of the
    last suggestion) has finished, so one move's work does not bleed into the next one's time."""
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while True:
        stats = await editor.stats()
        if (
            not stats.get("in_flight")
            and not int(stats.get("warming", 0) or 0)
            and await asyncio.to_thread(daemon.idle)
        ):
            return
        if time.monotonic() > deadline:
            raise LocalspecError(
                f"The daemon was still busy {REQUEST_TIMEOUT_S:g} s after the last suggestion."
            )
        await asyncio.sleep(QUIET_POLL_S)


def against_text(original: str, suggestion: str) -> str:
    """Four characters that differ from the suggestion's start: the deleted line's own, else a fallback."""
    for candidate in (original[:TYPED_CHARS], *FALLBACK_AGAINST):
        if (
            len(candidate) == TYPED_CHARS
            and "\n" not in candidate
            and not suggestion.startswith(candidate[:1])
        ):
            return candidate
    return FALLBACK_AGAINST[0]


async def _jump(
    editor: Editor,
    daemon: DaemonProcess,
    path: Path,
    line: int,
    scenario: str,
    line_mode: str,
    samples: list[Sample],
) -> None:
    """Jump to `line` of `path`: delete the rest of the line after its indentation, ask, then type along and
    against the suggestion; restore the line at the end."""
    await wait_quiet(editor, daemon)
    await editor.daemon_records(daemon)  # what finished during the pause (a pre-compute) is no request's own
    document = editor.documents[path]
    lines = document.text.split("\n")
    line_start = sum(len(text) + 1 for text in lines[:line])
    indent = len(lines[line]) - len(lines[line].lstrip(" \t"))
    cursor = line_start + indent
    original = lines[line][indent:]
    editor.edit(document, cursor, cursor + len(original), "")
    editor.ring.add(document.name, document.text, line)

    async def ask(scenario: str, typed: str) -> str:
        offset = cursor + len(typed)
        slow_prompts = bool((await editor.stats()).get("daemon", {}).get("slow_prompts"))
        answer = await editor.suggest(document, offset)
        finished = await editor.daemon_records(daemon)
        samples.append(
            Sample(
                line_mode=line_mode,
                scenario=scenario,
                file=document.name,
                line=line,
                column=position_at(document.text, offset).character,
                typed=typed,
                seconds=answer.seconds,
                server_seconds=answer.server_seconds,
                text=answer.text,
                failed=answer.failed,
                document=document.text,
                offset=offset,
                extra=answer.extra,
                slow_prompts=slow_prompts,
                daemon=[{key: entry.get(key) for key in DAEMON_FIELDS} for entry in finished],
            )
        )
        return answer.text

    suggestion = await ask(scenario, "")
    if suggestion:
        along = suggestion.split("\n", 1)[0][:TYPED_CHARS]
        for typing, characters in (
            ("typing-along", along),
            ("typing-against", against_text(original, suggestion)),
        ):
            if not characters:  # the suggestion starts with a line break: nothing to type along
                continue
            for count in range(1, len(characters) + 1):
                editor.edit(document, cursor + count - 1, cursor + count - 1, characters[count - 1])
                await ask(typing, characters[:count])
            editor.edit(document, cursor, cursor + len(characters), "")
    editor.edit(document, cursor, cursor, original)


def _place_stream(pickers: dict[Path, PlacePicker], order: list[Path]) -> Iterator[tuple[Path, int]]:
    """Places in `order`'s files in turn, until one of them has no place left."""
    while True:
        for path in order:
            place = pickers[path].next()
            if place is None:
                return
            yield path, place


async def run_line_mode(
    editor: Editor,
    daemon: DaemonProcess,
    files: list[tuple[Path, str]],
    jumps: int,
    seed: int,
    line_mode: str,
    progress: Progress,
) -> list[Sample]:
    """Every scenario in one line mode: `jumps` jumps within files, then `jumps` jumps alternating files."""
    rng = random.Random(f"{seed}-{line_mode}")
    pickers = {path: PlacePicker(text.split("\n"), rng) for path, text in files}
    samples: list[Sample] = []
    per_file = -(-jumps // len(files))
    done = 0
    current: Path | None = None
    # Within a file: consecutive places in one file (the first one in the next file is a move from another).
    for path, _ in files:
        for index in range(per_file):
            place = pickers[path].next() if done < jumps else None
            if place is None:
                break
            scenario = "jump-other-file" if index == 0 and done else "jump-in-file"
            await _jump(editor, daemon, path, place, scenario, line_mode, samples)
            done += 1
            current = path
            if done % 10 == 0:
                progress(f"{line_mode}: {done} jumps, {len(samples)} requests")
    if len(files) > 1:
        order = [path for path, _ in files]
        last = order.index(current) if current is not None else -1
        stream = _place_stream(pickers, order[last + 1 :] + order[: last + 1])
        for _, (path, place) in zip(range(jumps), stream, strict=False):
            await _jump(editor, daemon, path, place, "jump-other-file", line_mode, samples)
            done += 1
            if done % 10 == 0:
                progress(f"{line_mode}: {done} jumps, {len(samples)} requests")
    progress(f"{line_mode}: {len(samples)} requests")
    return samples


async def measure_localspec(
    daemon: DaemonProcess,
    root: Path,
    files: list[tuple[Path, str]],
    options: BenchOptions,
    progress: Progress,
    samples: list[Sample],
    info: dict[str, Any],
    checkpoint: Callable[[], object],
) -> None:
    """All line modes through a fresh language server each (its suggestion cache must not carry over), into
    `samples` and `info`; `checkpoint()` after each."""
    info.update(
        {
            "warm_up_seconds": {},
            "warm_up_windows": {},
            "lsp_stats": {},
            "lsp_warnings": {},
            "daemon_prices": {},
            "daemon_prompt_cache": {},
        }
    )
    for line_mode in options.line_modes:
        settings = LspSettings.from_options(lsp_options(line_mode, options.max_tokens))
        editor = Editor(daemon.home, root, settings, line_mode, options.max_tokens)
        try:
            await editor.start()
            for path, text in files:
                editor.open(path, text)
            warm = await wait_warm(editor, daemon, options.warm_timeout, progress)
            progress(f"{line_mode}: warm after {warm:.1f} s")
            info["warm_up_seconds"][line_mode] = round(warm, 3)
            # Windows warmed, and those left cold because the daemon's prompt cache had no room for them.
            warmed = await editor.stats()
            info["warm_up_windows"][line_mode] = {
                "warmed": warmed.get("warmed"),
                "waiting": warmed.get("warm_waiting"),
            }
            # The prices the daemon's chooser plans with decide whether suggestions draft (timed at its start); the
            # prompt cache's counts (copies held, saved, restored, dropped for room) say how jumps found their windows.
            engine = daemon.stats()["engine"]
            prices = info["daemon_prices"][line_mode] = {"start": engine.get("prices")}
            cache = info["daemon_prompt_cache"][line_mode] = {"start": engine.get("prompt_cache")}
            samples += await run_line_mode(
                editor, daemon, files, options.jumps, options.seed, line_mode, progress
            )
            engine = daemon.stats()["engine"]
            prices["end"], cache["end"] = engine.get("prices"), engine.get("prompt_cache")
            stats = await editor.stats()
            info["lsp_stats"][line_mode] = stats.get("suggestions", {})
            info["lsp_warnings"][line_mode] = editor.warnings
            if stats.get("suggestions", {}).get("unavailable"):
                raise LocalspecError(
                    f"The language server did not reach the benchmark's daemon: {stats.get('daemon')}"
                )
        finally:
            await editor.stop()
        checkpoint()


# ---- llama-server ------------------------------------------------------------------------------------------------


def replay_llama_server(
    client: InfillClient,
    mode: str,
    samples: list[Sample],
    files: list[tuple[Path, str]],
    root: Path,
    options: BenchOptions,
    progress: Progress,
    warm: dict[str, float],
    checkpoint: Callable[[], object],
) -> None:
    """The recorded cursor states, in order, through llama-server's /infill, each generating as many tokens as
    localspec did. Fills `warm` with the warm-up seconds per line mode (llama.vscode's n_predict=0 request with the
    chunks of the opened files, before the first move) and calls `checkpoint` after each line mode."""
    replayed = 0
    for line_mode in options.line_modes:
        settings = LspSettings.from_options(lsp_options(line_mode, options.max_tokens))
        ring = ChunkRing(settings.ring_chunks, settings.chunk_lines)
        for path, text in files:
            ring.add(path.relative_to(root).as_posix(), text, 0)
        warm[line_mode] = round(client.warm(ring.extra(max_chars=settings.extra_max_chars)), 3)
        for sample in samples:
            if sample.line_mode != line_mode:
                continue
            prompt = build_prompt(
                sample.document, sample.offset, sample.file, settings, sample.extra, sample.slow_prompts
            )
            # The same work: as many tokens as localspec generated (or its cached answer holds).
            n_predict = sample.generated_tokens() or (
                client.count_tokens(sample.text) if sample.text else None
            )
            answer = client.infill(prompt.prefix, prompt.suffix, prompt.extra, prompt.single_line, n_predict)
            sample.llama_server[mode] = {
                "seconds": round(answer.seconds, 5),
                "text": answer.text,
                "n_predict": n_predict or options.max_tokens,
            }
            replayed += 1
            if replayed % 100 == 0:
                progress(f"llama-server {mode}: {replayed} requests")
        checkpoint()


# ---- the whole run -----------------------------------------------------------------------------------------------


def run_benchmark(options: BenchOptions, out: Path, console: Any) -> dict[str, Any]:
    """Choose files, measure localspec (daemon + language server), then llama-server; print and write `out`."""
    import datetime
    import json
    import tempfile

    from localspec.benchmark.infill_server import server_modes
    from localspec.benchmark.machine import machine_info
    from localspec.benchmark.runner import LlamaServer

    files = choose_files(find_sources(options.sources), options.files, options.min_lines)
    root = Path(os.path.commonpath([str(path.parent) for path, _ in files]))
    console.print(f"files (workspace {root}):")
    for path, text in files:
        console.print(f"  {path.relative_to(root)}  {text.count(chr(10)) + 1} lines")
    modes = server_modes(list(options.server_modes), options.draft) if options.llama_server else []
    layers = str(options.gpu_layers)
    serve_args = [
        "--target",
        str(options.target),
        "--n-ctx",
        str(options.n_ctx),
        "--threads",
        str(options.threads),
    ]
    serve_args += ["--target-gpu-layers", layers, "--draft-gpu-layers", layers, "--no-watch"]
    if options.draft is not None:
        serve_args += ["--draft", str(options.draft)]

    samples: list[Sample] = []
    info: dict[str, Any] = {"llama_server_warm_up_seconds": {}, "llama_server_commands": {}}
    names: list[str] = []
    started = datetime.datetime.now().isoformat(timespec="seconds")

    def write(complete: bool) -> dict[str, Any]:
        """The results so far (a long run that is stopped or fails keeps what it measured)."""
        meta = {
            "date": started,
            "complete": complete,
            **machine_info(),
            "target": str(options.target),
            "cost_scaled": options.cost_scaled,
            "draft": str(options.draft) if options.draft else None,
            "files": [{"path": str(path), "lines": text.count("\n") + 1} for path, text in files],
            "workspace": str(root),
            "options": {
                key: [str(v) for v in value] if isinstance(value, list | tuple) else str(value)
                for key, value in vars(options).items()
            },
            "lsp_initialization_options": {
                mode: lsp_options(mode, options.max_tokens) for mode in options.line_modes
            },
            "daemon_args": serve_args,
            "daemon_config": options.daemon_config.read_text() if options.daemon_config else None,
            **info,
        }
        result = {
            "meta": meta,
            "summary": summarize(samples, names),
            "samples": [s.as_json() for s in samples],
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        return result

    with tempfile.TemporaryDirectory(prefix="localspec-bench-editor-") as folder:
        console.print("starting localspec serve …")
        daemon = DaemonProcess(Path(folder) / "home", serve_args, options.warm_timeout, options.daemon_config)
        try:
            asyncio.run(
                measure_localspec(
                    daemon, root, files, options, console.print, samples, info, lambda: write(False)
                )
            )
        finally:
            daemon.close()

    for mode in modes:
        console.print(f"llama-server {mode.name} …")
        assert options.llama_server is not None
        server = LlamaServer(
            options.llama_server,
            options.target,
            mode,
            options.n_ctx,
            options.threads,
            "all" if options.gpu_layers < 0 else layers,
            out.with_name(f"{out.stem}-llama-server.log"),
        )
        client = InfillClient(server, options.max_tokens)
        try:
            info["llama_server_commands"][mode.name] = " ".join(server.command)
            names.append(mode.name)
            warm: dict[str, float] = {}
            info["llama_server_warm_up_seconds"][mode.name] = warm
            replay_llama_server(
                client, mode.name, samples, files, root, options, console.print, warm, lambda: write(False)
            )
        finally:
            client.close()
            server.close()

    result = write(True)
    print_report(result["summary"], names, info, console, options.target_label or options.target.name)
    console.print(f"results: {out}")
    return result
