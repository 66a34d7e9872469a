"""Reading config.toml and LOCALSPEC_* settings: a value that cannot mean what it says is refused, named, and the
fix suggested, rather than silently left at its default or rounded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from localspec.config import Config, describe, load_config
from localspec.errors import ConfigError


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ=environ or {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[speculative]\ndraft_maxx = 8\n",
            r"sets speculative\.draft_maxx, which is not a setting\. Did you mean speculative\.draft_max\?",
        ),
        (
            "[enigne]\nn_ctx = 1024\n",
            r"sets enigne\.n_ctx, which is not a setting\. Did you mean engine\.n_ctx\?",
        ),
        ("[server]\nthreads = 2\n", r"sets server\.threads, which is not a setting\."),
        ("port = 9000\n", r"sets 'port' outside a section; .* Put it under \[server\] \(server\.port\)\."),
    ],
)
def test_a_key_no_setting_reads_is_refused_with_what_was_meant(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, text)


def test_a_variable_no_setting_reads_is_refused_and_others_of_localspec_are_left_alone(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        ConfigError,
        match=r"The environment sets LOCALSPEC_SERVER_PROT, which is not a setting\. Did you mean LOCALSPEC_SERVER_PORT\?",
    ):
        _load(tmp_path, "", {"LOCALSPEC_SERVER_PROT": "9000"})
    config = _load(
        tmp_path, "", {"LOCALSPEC_HOME": "/tmp/x", "LOCALSPEC_SERVER_PORT": "9000", "PATH": "/bin"}
    )
    assert config.port == 9000


def test_a_retired_setting_left_in_the_file_or_the_environment_does_not_stop_it_loading(
    tmp_path: Path,
) -> None:
    config = _load(
        tmp_path,
        '[engine]\ndevice_sampling = "off"\nn_ctx = 2048\n',
        {"LOCALSPEC_ENGINE_DEVICE_SAMPLING": "on"},
    )
    assert config.n_ctx == 2048


def test_every_setting_config_show_lists_is_read_back_from_the_file(tmp_path: Path) -> None:
    rows = describe(Config())
    document: dict[str, dict[str, object]] = {}
    for name, value, _ in rows:
        section, key = name.split(".")
        document.setdefault(section, {})[key] = value
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(document), encoding="utf-8")
    assert describe(load_config(path, environ={})) == [
        (name, value, f"config file {path}") for name, value, _ in rows
    ]


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[engine]\nn_ctx = 4096.5\n", {}, r"engine\.n_ctx from .* must be a whole number, got 4096\.5\."),
        (
            "",
            {"LOCALSPEC_ENGINE_THREADS": "two"},
            r"engine\.threads from LOCALSPEC_ENGINE_THREADS must be a whole number",
        ),
        (
            "",
            {"LOCALSPEC_ENGINE_PROMPT_CACHE_PINNED": "nope"},
            r"prompt_cache_pinned .* must be true or false, got 'nope'",
        ),
        ('[engine]\nprompt_cache_pinned = "maybe"\n', {}, r"must be true or false, got 'maybe'"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_not_rounded_or_guessed(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, text, environ)


def test_whole_floats_and_the_usual_words_for_true_and_false_are_taken(tmp_path: Path) -> None:
    config = _load(tmp_path, "[engine]\nn_ctx = 2048.0\n", {"LOCALSPEC_ENGINE_PROMPT_CACHE_PINNED": "off"})
    assert (config.n_ctx, config.prompt_cache_pinned) == (2048, False)
    config = _load(tmp_path, "", {"LOCALSPEC_ENGINE_PROMPT_CACHE_PINNED": "Yes"})
    assert config.prompt_cache_pinned is True


def test_config_show_names_the_typo_and_exits_non_zero(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    config_file = home / "config" / "config.toml"
    config_file.write_text('[speculative]\nmodee = "ngram"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    result = subprocess.run(
        [sys.executable, "-m", "localspec", "config", "show"],
        env=env | {"LOCALSPEC_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        f"{config_file} sets speculative.modee, which is not a setting. Did you mean speculative.mode?"
        in (result.stderr)
    )
