"""`localspec complete`: one completion from the command line, in-process or through the daemon."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "complete",
        help="complete a prompt and print speculative stats",
        description="Stream a completion to stdout and its speculative decoding stats to stderr.",
    )
    parser.add_argument("prompt", help="the prompt text ('-' reads it from stdin)")
    parser.add_argument("--target", help="target GGUF path or catalog name (default: the configured model)")
    parser.add_argument("--draft", help="draft GGUF path or catalog name (default: the configured draft)")
    parser.add_argument(
        "--no-draft", action="store_true", help="no draft model (n-gram drafts may still be used)"
    )
    parser.add_argument(
        "--mode",
        choices=["adaptive", "draft", "ngram", "none"],
        help="speculative mode (default: configured, usually adaptive)",
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--n-ctx", type=int, help="context size")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    parser.add_argument(
        "--draft-max", help="most tokens drafted per step, or auto (24 on a GPU, 16 on a CPU)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    parser.add_argument(
        "--check",
        action="store_true",
        help="also run the target alone and exit 3 if the outputs differ (losslessness check)",
    )
    parser.add_argument("--daemon", action="store_true", help="use the running daemon (started if needed)")
    parser.set_defaults(func=run)


def _summary(text: str, stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": text,
        "tokens": stats["tokens"],
        "drafted": stats["drafted"],
        "accepted": stats["accepted"],
        "acceptance": stats["acceptance"],
        "tokens_per_second": stats["tokens_per_second"],
        "mean_accepted_length": stats.get("mean_accepted_length"),
        "steps_by_source": stats.get("steps_by_source") or stats.get("draft_sources"),
    }


def _shown(value: Any, spec: str = "") -> str:
    """A stat as text; null (a remote backend that does not report it) shows as unknown, never as 0."""
    return "unknown" if value is None else format(value, spec)


def _print_stats(label: str, stats: dict[str, Any]) -> None:
    print(
        f"[{label}] {stats['tokens']} tokens, {stats['tokens_per_second']:.2f} tok/s, "
        f"drafted {_shown(stats['drafted'])}, accepted {_shown(stats['accepted'])} "
        f"(acceptance {_shown(stats['acceptance'], '.0%')}), "
        f"mean accepted length {_shown(stats.get('mean_accepted_length', 0), '.2f')} tokens per target pass, "
        f"steps by draft source {_shown(stats.get('steps_by_source') or stats.get('draft_sources'))}",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.daemon:
        return _run_daemon(args, prompt)
    from localspec.config import load_config
    from localspec.engine import Engine, EngineSettings, GenerationRequest, SamplingParams
    from localspec.engine.llama_model import shutdown
    from localspec.models import resolve_run_models

    config = load_config(
        overrides={"n_ctx": args.n_ctx, "threads": args.threads, "draft_max": args.draft_max}
    )
    target_path, draft_path = resolve_run_models(
        config.models_path(), config.target, config.draft, args.target, args.draft, args.no_draft
    )
    engine = Engine(
        EngineSettings.from_config(config, target_path, draft_path, slots=2, mode=args.mode or config.mode)
    )
    try:

        def request(mode: str | None, slot: str) -> GenerationRequest:
            return GenerationRequest(
                prompt=prompt,
                max_tokens=args.max_tokens,
                stop=args.stop,
                slot=slot,
                speculative=mode,  # type: ignore[arg-type]
                sampling=SamplingParams(
                    temperature=args.temperature,
                    top_k=args.top_k,
                    top_p=args.top_p,
                    seed=args.seed if args.seed is not None else 0,
                ),
            )

        generation = engine.generate(request(None, "spec"))
        for event in generation:
            if not args.json:
                sys.stdout.write(event.text)
                sys.stdout.flush()
        assert generation.result is not None
        result = generation.result
        stats = result.stats.as_dict()
        if args.json:
            summary = _summary(result.text, stats)
        else:
            sys.stdout.write("\n")
            _print_stats("speculative", stats)
        exit_code = 0
        if args.check:
            alone = engine.complete(request("none", "alone"))
            identical = alone.token_ids == result.token_ids
            if args.json:
                summary["check"] = {
                    "identical": identical,
                    "target_alone_text": alone.text,
                    "target_alone_tokens_per_second": alone.stats.as_dict()["tokens_per_second"],
                }
            else:
                _print_stats("target alone", alone.stats.as_dict())
                print(f"[check] outputs {'identical' if identical else 'DIFFER'}", file=sys.stderr)
            exit_code = 0 if identical else 3
        if args.json:
            print(json.dumps(summary))
        return exit_code
    finally:
        engine.close()
        shutdown()  # llama.cpp's process-wide state goes before the interpreter's teardown, in order


def _run_daemon(args: argparse.Namespace, prompt: str) -> int:
    from localspec.client import connect

    if args.check or args.target or args.draft or args.no_draft:
        print(
            "localspec: --check/--target/--draft/--no-draft run in-process; drop --daemon to use them.",
            file=sys.stderr,
        )
        return 2
    text_parts: list[str] = []
    final: dict[str, Any] = {}
    with connect(autostart=True) as client:
        for chunk in client.stream_complete(
            prompt,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            seed=args.seed,
            stop=args.stop or None,
            speculative=args.mode,
        ):
            text = chunk["choices"][0].get("text", "") if chunk.get("choices") else ""
            text_parts.append(text)
            if not args.json:
                sys.stdout.write(text)
                sys.stdout.flush()
            if chunk.get("speculative"):
                final = {**chunk["speculative"], "tokens": chunk.get("usage", {}).get("completion_tokens", 0)}
    stats = {"tokens": 0, "drafted": 0, "accepted": 0, "acceptance": 0.0, "tokens_per_second": 0.0, **final}
    if args.json:
        print(json.dumps(_summary("".join(text_parts), stats)))
    else:
        sys.stdout.write("\n")
        _print_stats("daemon", stats)
    return 0
