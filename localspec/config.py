"""Typed configuration: defaults < config.toml < LOCALSPEC_* environment < command-line flags.

Every value remembers where it came from so `localspec config show` can explain itself.
The TOML file groups keys in sections; the environment names are LOCALSPEC_<SECTION>_<KEY>
(e.g. LOCALSPEC_SERVER_PORT=9000).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from localspec import locations
from localspec.errors import ConfigError

DEFAULT_PAIR = "qwen2.5-coder-1.5b+0.5b"
SPECULATIVE_MODES = ("adaptive", "draft", "ngram", "none")
DRAFT_AHEAD_CHOICES = ("auto", "on", "off")
BACKENDS = ("local", "remote")
REMOTE_KINDS = ("auto", "llama-server", "vllm", "openai")
# Qwen2.5-Coder's fill-in-the-middle tokens (the default pair's), for remotes without an infill endpoint.
DEFAULT_FIM_TOKENS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
# Engine defaults and limits, defined here once: config.toml, the API's request schema and the engine's own
# settings (EngineSettings) all use these.
DEFAULT_N_CTX = 4096  # context tokens per slot
DEFAULT_SLOTS = 4
# Most tokens drafted per step; "auto": DRAFT_MAX_GPU where the target runs on a GPU (a longer verify pass costs
# little more than a shorter one there), DRAFT_MAX_CPU on a CPU (where it costs nearly as many one-token passes).
DEFAULT_DRAFT_MAX = "auto"
DRAFT_MAX_GPU, DRAFT_MAX_CPU = 24, 16
DRAFT_MAX_LIMIT = 64  # the most speculative.draft_max may be
# The draft model stops drafting below this confidence; "auto": from what a draft token costs against a target
# token on this machine (`drafters.confidence_floor`).
DEFAULT_DRAFT_P_MIN = "auto"
DEFAULT_HISTORY_TOKENS = 16384  # earlier outputs kept as an n-gram draft source
# Host memory (MiB) for saved KV sequences (engine/kv_snapshots.py); "auto": a quarter of this machine's memory,
# within PROMPT_CACHE_AUTO_MB. A larger target holds more KV per token (a 7B-14B several times the 1.5B's), so the
# same files' windows need more room.
DEFAULT_PROMPT_CACHE_MB = "auto"
PROMPT_CACHE_AUTO_MB = (4096, 16384)
PROMPT_CACHE_MAX_MB = 1 << 20


@dataclass
class Config:
    # [models]: catalog names or paths to GGUF files. An empty draft means "the pair's draft" or none.
    target: str = field(default=DEFAULT_PAIR, metadata={"section": "models"})
    draft: str = field(default="", metadata={"section": "models"})
    models_dir: str = field(default="", metadata={"section": "models", "key": "dir"})
    target_gpu_layers: int = field(default=-1, metadata={"section": "models"})
    draft_gpu_layers: int = field(default=-1, metadata={"section": "models"})
    # `models pull` refuses to start unless this much disk stays free after the download.
    min_free_gb: float = field(default=1.0, metadata={"section": "models"})
    # [engine]
    n_ctx: int = field(default=DEFAULT_N_CTX, metadata={"section": "engine"})
    threads: int = field(default=0, metadata={"section": "engine"})
    slots: int = field(default=DEFAULT_SLOTS, metadata={"section": "engine"})
    # Host memory (MiB) for copies of evaluated prompts beyond the slots, so returning to a place is cheap; 0 = off,
    # "auto" = a quarter of this machine's memory, 4-16 GiB.
    prompt_cache_mb: str = field(default=DEFAULT_PROMPT_CACHE_MB, metadata={"section": "engine"})
    # Keep those copies in page-locked memory (as much as prompt_cache_mb) where the models run on a GPU: the GPU
    # restores them about 3x as fast. Page-locked memory cannot be swapped out; false keeps them swappable.
    prompt_cache_pinned: bool = field(default=True, metadata={"section": "engine"})
    # "local": llama.cpp in this process; "remote": an existing inference server does the decoding (docs/REMOTE.md).
    backend: str = field(default="local", metadata={"section": "engine"})
    remote_url: str = field(default="", metadata={"section": "engine"})
    # The remote's bearer key is read from this file or environment variable; the key itself is never stored here.
    remote_api_key_file: str = field(default="", metadata={"section": "engine"})
    remote_api_key_env: str = field(default="", metadata={"section": "engine"})
    remote_model: str = field(default="", metadata={"section": "engine"})  # "" = the remote's first model
    remote_kind: str = field(default="auto", metadata={"section": "engine"})
    # Seconds the remote may stay silent (connecting, or between two chunks of a stream) before a request fails.
    remote_timeout: float = field(default=120.0, metadata={"section": "engine"})
    # prefix, suffix, middle tokens of the remote model, for infill through /v1/completions (not llama-server).
    remote_fim_tokens: list[str] = field(
        default_factory=lambda: list(DEFAULT_FIM_TOKENS), metadata={"section": "engine"}
    )
    # [speculative]
    mode: str = field(default="adaptive", metadata={"section": "speculative"})
    draft_max: str = field(default=DEFAULT_DRAFT_MAX, metadata={"section": "speculative"})
    draft_p_min: str = field(default=DEFAULT_DRAFT_P_MIN, metadata={"section": "speculative"})
    # Tokens of earlier outputs kept (in memory only) as an n-gram draft source for later requests; 0 = off.
    history_tokens: int = field(default=DEFAULT_HISTORY_TOKENS, metadata={"section": "speculative"})
    # The draft model drafts the next step during each verify pass, on a thread of its own: "auto" = where both
    # models run on a GPU.
    draft_ahead: str = field(default="auto", metadata={"section": "speculative"})
    # [server]
    host: str = field(default="127.0.0.1", metadata={"section": "server"})
    port: int = field(default=8717, metadata={"section": "server"})
    allow_origins: list[str] = field(default_factory=list, metadata={"section": "server"})
    # Where each value came from: "default", "config file", "env LOCALSPEC_…", "flag --…".
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def models_path(self) -> Path:
        return Path(self.models_dir).expanduser() if self.models_dir else locations.default_models_dir()

    def validate(self) -> None:
        if self.mode not in SPECULATIVE_MODES:
            raise ConfigError(
                f"speculative.mode must be one of {', '.join(SPECULATIVE_MODES)}, not {self.mode!r}."
            )
        draft_max_setting(self.draft_max)
        draft_p_min_setting(self.draft_p_min)
        if not 0 <= self.history_tokens <= 1_048_576:
            raise ConfigError(
                f"speculative.history_tokens must be between 0 and 1048576, not {self.history_tokens}."
            )
        if self.draft_ahead not in DRAFT_AHEAD_CHOICES:
            raise ConfigError(
                f"speculative.draft_ahead must be one of {', '.join(DRAFT_AHEAD_CHOICES)}, not "
                f"{self.draft_ahead!r}."
            )
        if self.n_ctx < 64:
            raise ConfigError(f"engine.n_ctx must be at least 64, not {self.n_ctx}.")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"server.port must be between 0 and 65535, not {self.port}.")
        if self.backend not in BACKENDS:
            raise ConfigError(f"engine.backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}.")
        if self.remote_kind not in REMOTE_KINDS:
            raise ConfigError(
                f"engine.remote_kind must be one of {', '.join(REMOTE_KINDS)}, not {self.remote_kind!r}."
            )
        if self.backend == "remote" and not self.remote_url.startswith(("http://", "https://")):
            raise ConfigError(
                'engine.backend is "remote" but engine.remote_url is '
                f"{self.remote_url or 'empty'}; set it to the server's address, e.g. http://10.0.0.5:8080."
            )
        if self.remote_timeout <= 0:
            raise ConfigError(
                f"engine.remote_timeout must be more than 0 seconds, not {self.remote_timeout}."
            )
        if len(self.remote_fim_tokens) != 3:
            raise ConfigError(
                "engine.remote_fim_tokens must name three tokens (prefix, suffix, middle), not "
                f"{self.remote_fim_tokens!r}."
            )
        if self.slots < 1:
            raise ConfigError(f"engine.slots must be at least 1, not {self.slots}.")
        prompt_cache_mb_setting(self.prompt_cache_mb)


_Number = TypeVar("_Number", int, float)


def draft_max_setting(value: str) -> int | None:
    """`speculative.draft_max` ("auto" or a whole number from 0 to DRAFT_MAX_LIMIT) as the engine takes it: None
    for auto."""
    return _auto_or_number("speculative.draft_max", value, int, 0, DRAFT_MAX_LIMIT, "a whole number")


def draft_p_min_setting(value: str) -> float | None:
    """`speculative.draft_p_min` ("auto" or a number from 0 to 1) as the engine takes it: None for auto."""
    return _auto_or_number("speculative.draft_p_min", value, float, 0.0, 1.0, "a number")


def prompt_cache_mb_setting(value: str) -> int | None:
    """`engine.prompt_cache_mb` ("auto" or MiB, 0 = off) as the engine takes it: None for auto."""
    return _auto_or_number(
        "engine.prompt_cache_mb", value, int, 0, PROMPT_CACHE_MAX_MB, "a whole number of MiB"
    )


def _auto_or_number(
    key: str, value: str, parse: Callable[[str], _Number], low: _Number, high: _Number, kind: str
) -> _Number | None:
    """None for "auto" (any case), else `value` parsed, refused with a message naming `key` outside low..high."""
    if value.strip().lower() == "auto":
        return None
    try:
        number = parse(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        shown = (str(low), str(high)) if isinstance(high, int) else (f"{low:g}", f"{high:g}")
        raise ConfigError(f'{key} must be "auto" or {kind} from {shown[0]} to {shown[1]}, not {value!r}.')
    return number


def draft_ahead_setting(choice: str) -> bool | None:
    """`speculative.draft_ahead` ("auto", "on", "off") as the engine takes it: None lets it decide (auto)."""
    return {"on": True, "off": False}.get(choice)


def _field_key(f: dataclasses.Field[Any]) -> tuple[str, str]:
    return f.metadata["section"], f.metadata.get("key", f.name)


def _env_name(section: str, key: str) -> str:
    """The environment variable of a setting: LOCALSPEC_<SECTION>_<KEY>."""
    return f"LOCALSPEC_{section}_{key}".upper()


def _config_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in fields(Config) if f.name != "sources"]


# How a setting's type is named in an error.
_KINDS = {
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
    "list": "a list",
    "str": "text",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(name: str, raw: Any, like: Any, origin: str) -> Any:
    try:
        if isinstance(like, bool):
            text = str(raw).strip().lower()  # (TOML's true and false, or an environment variable's text)
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError(raw)
        if isinstance(like, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)  # (int() would drop the fraction without a word)
            return int(raw)
        if isinstance(like, float):
            return float(raw)
        if isinstance(like, list):
            if isinstance(raw, str):
                return [item.strip() for item in raw.split(",") if item.strip()]
            return list(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        kind = _KINDS.get(type(like).__name__, type(like).__name__)
        raise ConfigError(f"{name} from {origin} must be {kind}, got {raw!r}.") from exc


# Settings an earlier version read and this one does not: a file that still sets one loads, the line unused.
RETIRED_SETTINGS = frozenset({"engine.device_sampling"})


def _refuse_unknown(file_values: dict[str, Any], environ: Mapping[str, str], path: Path) -> None:
    """A key config.toml sets, or a LOCALSPEC_<SECTION>_* variable, that no setting reads is a typo or a misplaced
    line: say which, and what was meant, rather than run with the default the user meant to change (a retired
    setting is left alone)."""
    known = {_field_key(f) for f in _config_fields()}
    names = sorted(f"{section}.{key}" for section, key in known)

    def refuse(shown: str, origin: str, choices: list[str]) -> None:
        close = difflib.get_close_matches(shown, choices, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(
            f"{origin} sets {shown}, which is not a setting.{hint} `localspec config show` lists every setting."
        )

    for section, values in file_values.items():
        if not isinstance(values, dict):  # a key above every [section]
            homes = [name for name in names if name.endswith(f".{section}")]
            where = f" Put it under [{homes[0].split('.')[0]}] ({homes[0]})." if homes else ""
            raise ConfigError(
                f"{path} sets {section!r} outside a section; settings go under [models], [engine], "
                f"[speculative] or [server].{where}"
            )
        for key in values:
            if (section, key) not in known and f"{section}.{key}" not in RETIRED_SETTINGS:
                refuse(f"{section}.{key}", str(path), names)
    variables = sorted(_env_name(section, key) for section, key in known)
    prefixes = {_env_name(section, ""): section for section, _ in known}
    for variable in environ:
        if variable in variables:
            continue
        for prefix, section in prefixes.items():  # (LOCALSPEC_HOME and the like are not settings)
            if (
                variable.startswith(prefix)
                and f"{section}.{variable[len(prefix) :].lower()}" not in RETIRED_SETTINGS
            ):
                refuse(variable, "The environment", variables)


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective config. `overrides` are command-line values keyed by field name (None = unset)."""
    path = path or locations.config_file()
    environ = os.environ if environ is None else environ
    config = Config()
    defaults = Config()
    file_values: dict[str, Any] = {}
    if path.exists():
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{path} is not valid TOML ({exc}). Fix or delete it; defaults apply without it."
            ) from exc
    _refuse_unknown(file_values, environ, path)
    for f in _config_fields():
        section, key = _field_key(f)
        like = getattr(defaults, f.name)
        config.sources[f.name] = "default"
        section_values = file_values.get(section, {})
        if isinstance(section_values, dict) and key in section_values:
            setattr(config, f.name, _coerce(f"{section}.{key}", section_values[key], like, str(path)))
            config.sources[f.name] = f"config file {path}"
        env_name = _env_name(section, key)
        if env_name in environ:
            setattr(config, f.name, _coerce(f"{section}.{key}", environ[env_name], like, env_name))
            config.sources[f.name] = f"env {env_name}"
        if overrides and overrides.get(f.name) is not None:
            setattr(config, f.name, _coerce(f.name, overrides[f.name], like, "command line"))
            config.sources[f.name] = "command line"
    config.validate()
    return config


def update_config_file(values: Mapping[str, Any], path: Path | None = None) -> Path:
    """Set fields (by field name) in config.toml, keeping the rest; written atomically."""
    path = path or locations.config_file()
    document: dict[str, Any] = {}
    if path.exists():
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    by_name = {f.name: f for f in _config_fields()}
    for name, value in values.items():
        if name not in by_name:
            raise ConfigError(f"Unknown setting {name!r}; known: {', '.join(sorted(by_name))}.")
        section, key = _field_key(by_name[name])
        document.setdefault(section, {})[key] = value
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(document), encoding="utf-8")
    os.replace(tmp, path)
    return path


def describe(config: Config) -> list[tuple[str, Any, str]]:
    """(section.key, value, source) rows for `localspec config show`."""
    rows = []
    for f in _config_fields():
        section, key = _field_key(f)
        rows.append((f"{section}.{key}", getattr(config, f.name), config.sources.get(f.name, "default")))
    return rows
