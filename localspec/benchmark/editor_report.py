"""The editor benchmark's samples (one per request), their percentiles and the printed tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCENARIOS = ("jump-in-file", "jump-other-file", "typing-along", "typing-against")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---- samples -----------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One request: the cursor state, localspec's answer and time, and llama-server's per mode."""

    line_mode: str
    scenario: str
    file: str
    line: int
    column: int
    typed: str
    seconds: float
    text: str
    failed: bool = False  # the language server answered nothing because the suggestion failed (a timeout)
    # The language server's own time for the request, from its handler's start to its answer: `seconds` less
    # this is the LSP transport; this less the daemon's record is the prompt window and the HTTP call.
    server_seconds: float | None = None
    llama_server: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What the daemon recorded for the generations that finished meanwhile (this one, a superseded pre-compute).
    daemon: list[dict[str, Any]] = field(default_factory=list)
    # The state replayed to llama-server (not written out: whole documents).
    document: str = field(default="", repr=False)
    offset: int = 0
    extra: list[tuple[str, str]] = field(default_factory=list, repr=False)
    slow_prompts: bool = False  # the language server's view when it built the prompt (`build_prompt`)

    def own_record(self) -> dict[str, Any] | None:
        """The daemon's record of this jump's own generation: what finished during the pause before it is no
        sample's, so it is the first suggestion recorded (the follow-up pre-computed after it may have finished
        too). None for typing (a superseded pre-compute may come first) and for answers from the cache."""
        if not self.scenario.startswith("jump"):
            return None
        generated = [entry for entry in self.daemon if entry.get("kind") == "infill"]
        return min(generated, key=lambda entry: int(entry["id"])) if generated else None

    def generated_tokens(self) -> int | None:
        """Tokens the daemon generated for this answer (None: answered from the suggestion cache)."""
        generated = [int(entry["tokens"]) for entry in self.daemon if entry.get("tokens")]
        return generated[-1] if generated else None

    def as_json(self) -> dict[str, Any]:
        return {
            "line_mode": self.line_mode,
            "scenario": self.scenario,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "typed": self.typed,
            "seconds": round(self.seconds, 5),
            "server_seconds": None if self.server_seconds is None else round(self.server_seconds, 5),
            "text": self.text,
            "failed": self.failed,
            "slow_prompts": self.slow_prompts,
            "llama_server": self.llama_server,
            "daemon": self.daemon,
        }


# ---- statistics and report ---------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def summarize(samples: list[Sample], server_modes: list[str]) -> list[dict[str, Any]]:
    """One row per (line mode, scenario): percentiles in ms for localspec and each llama-server mode."""
    rows = []
    for line_mode in dict.fromkeys(s.line_mode for s in samples):
        for scenario in SCENARIOS:
            mine = [s for s in samples if s.line_mode == line_mode and s.scenario == scenario]
            if not mine:
                continue
            seconds = [s.seconds for s in mine]
            row: dict[str, Any] = {
                "line_mode": line_mode,
                "scenario": scenario,
                "samples": len(mine),
                "empty": sum(1 for s in mine if not s.text and not s.failed),
                "failed": sum(1 for s in mine if s.failed),
                "localspec_p50_ms": _ms(percentile(seconds, 50)),
                "localspec_p90_ms": _ms(percentile(seconds, 90)),
                **_overheads(mine),
                "llama_server": {},
            }
            for mode in server_modes:
                answers = [s.llama_server[mode] for s in mine if mode in s.llama_server]
                times = [a["seconds"] for a in answers]
                p50 = percentile(times, 50)
                row["llama_server"][mode] = {
                    "p50_ms": _ms(p50),
                    "p90_ms": _ms(percentile(times, 90)),
                    "empty": sum(1 for a in answers if not a["text"]),
                    "agrees": sum(
                        1
                        for s in mine
                        if mode in s.llama_server and agrees(s.llama_server[mode]["text"], s.text)
                    ),
                    "localspec_p50_ratio": round(percentile(seconds, 50) / p50, 3) if p50 else None,  # type: ignore[operator]
                }
            rows.append(row)
    return rows


def _overheads(samples: list[Sample]) -> dict[str, float | None]:
    """Medians, over jumps the daemon answered, of their time outside the engine's generation: between the
    editor and the language server (the LSP transport), between the language server and the daemon (prompt
    window, HTTP), and in the daemon's record outside its generation's total (the prompt's tokens, the prompt
    cache's copies, queueing)."""
    lsp, link, daemon, new_tokens = [], [], [], []
    for sample in samples:
        record = sample.own_record()
        if sample.server_seconds is None or record is None:
            continue
        lsp.append(sample.seconds - sample.server_seconds)
        link.append(sample.server_seconds - float(record["seconds"]))
        daemon.append(float(record["seconds"]) - float((record.get("time") or {}).get("total") or 0.0))
        if record.get("prompt_tokens") is not None and record.get("cached_tokens") is not None:
            new_tokens.append(float(record["prompt_tokens"]) - float(record["cached_tokens"]))
    new_p50 = percentile(new_tokens, 50)
    return {
        "lsp_transport_p50_ms": _ms(percentile(lsp, 50)),
        "daemon_link_p50_ms": _ms(percentile(link, 50)),
        "daemon_unsplit_p50_ms": _ms(percentile(daemon, 50)),
        # prompt tokens evaluated anew (not found in the cache): a few where the window was warm
        "new_prompt_tokens_p50": None if new_p50 is None else round(new_p50),
    }


def agrees(server_text: str, text: str) -> bool:
    """Whether llama-server's answer starts with localspec's (which its end rules may have cut short)."""
    return server_text.startswith(text.rstrip()) if text.strip() else not server_text.strip()


def print_report(
    rows: list[dict[str, Any]],
    server_modes: list[str],
    info: dict[str, Any],
    console: Any,
    target: str = "",
) -> None:
    """The summary tables; `target` names the target in their titles (a cost-scaled one as such)."""
    from rich.table import Table

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    def cell1(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    ratio_mode = (
        "cache-reuse" if "cache-reuse" in server_modes else (server_modes[0] if server_modes else None)
    )
    for line_mode in dict.fromkeys(row["line_mode"] for row in rows):
        warm = info["warm_up_seconds"].get(line_mode)
        windows = info.get("warm_up_windows", {}).get(line_mode) or {}
        cold = (
            f", {windows['waiting']} windows left cold for lack of cache room"
            if windows.get("waiting")
            else ""
        )
        of = f", {target}" if target else ""
        table = Table(
            title=f"editor latency{of}, {line_mode}-line suggestions (ms; localspec warm-up {warm} s{cold})"
        )
        table.add_column("scenario")
        table.add_column("n", justify="right")
        table.add_column("empty", justify="right")
        table.add_column("failed", justify="right")
        table.add_column("localspec p50/p90", justify="right")
        table.add_column("outside the engine: LSP / HTTP / daemon", justify="right")
        table.add_column("new prompt tokens", justify="right")
        for mode in server_modes:
            table.add_column(f"llama-server {mode} p50/p90", justify="right")
            table.add_column("agrees", justify="right")
        if ratio_mode:
            table.add_column(f"localspec ÷ {ratio_mode} p50", justify="right")
        for row in (r for r in rows if r["line_mode"] == line_mode):
            cells = [
                row["scenario"],
                str(row["samples"]),
                str(row["empty"]),
                str(row["failed"]),
                f"{cell(row['localspec_p50_ms'])} / {cell(row['localspec_p90_ms'])}",
                " / ".join(
                    cell1(row[key])
                    for key in ("lsp_transport_p50_ms", "daemon_link_p50_ms", "daemon_unsplit_p50_ms")
                ),
                cell(row["new_prompt_tokens_p50"]),
            ]
            for mode in server_modes:
                server = row["llama_server"][mode]
                cells += [
                    f"{cell(server['p50_ms'])} / {cell(server['p90_ms'])}",
                    f"{server['agrees']}/{row['samples']}",
                ]
            if ratio_mode:
                ratio = row["llama_server"][ratio_mode]["localspec_p50_ratio"]
                cells.append("-" if ratio is None else f"{ratio:.2f}")
            table.add_row(*cells)
        console.print(table)
    warnings = {w for mode_warnings in info["lsp_warnings"].values() for w in mode_warnings}
    if any(row["failed"] for row in rows):
        console.print(
            f"[red]Some suggestions failed (their times are in the table): {'; '.join(sorted(warnings))}"
        )
    console.print(
        "Times run from sending the request to receiving its answer, with the language server's debounce set to "
        "0 ms; localspec's typing-along answers come from its suggestion cache, llama-server's are new requests "
        "(llama.vscode's own client-side cache is not modelled). llama-server generates as many tokens as localspec "
        "did; \"agrees\": its text starts with localspec's (localspec ends a suggestion at a block's end). "
        "Outside the engine: p50s over jumps of the time between the editor and the language server (LSP), between "
        "the language server and the daemon (its prompt window and HTTP call), and in the daemon outside the "
        "generation (the prompt's tokens and the prompt cache's copies); new prompt tokens: p50 over jumps of the "
        "prompt tokens the daemon evaluated anew (the rest came from its cache)."
    )
