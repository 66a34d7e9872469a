"""Remote-backend settings: validation, the API key's sources, and a URL shown without its credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from localspec.config import load_config
from localspec.errors import ConfigError
from localspec.remote.backend import RemoteSettings, read_api_key


def test_a_remote_backend_needs_an_http_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'engine.backend is "remote" but engine.remote_url is empty'):
        load_config(tmp_path / "none.toml", environ={"LOCALSPEC_ENGINE_BACKEND": "remote"})
    with pytest.raises(
        ConfigError, match=r"engine\.remote_kind must be one of auto, llama-server, vllm, openai"
    ):
        load_config(tmp_path / "none.toml", environ={"LOCALSPEC_ENGINE_REMOTE_KIND": "tgi"})
    config = load_config(
        tmp_path / "none.toml",
        environ={
            "LOCALSPEC_ENGINE_BACKEND": "remote",
            "LOCALSPEC_ENGINE_REMOTE_URL": "https://gpu.box:8443/",
        },
    )
    settings = RemoteSettings.from_config(config)
    assert settings.url == "https://gpu.box:8443" and settings.kind == "auto"


def test_the_api_key_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-file\n")
    assert read_api_key(RemoteSettings(url="http://x", api_key_file=str(key_file))) == "sk-file"
    monkeypatch.setenv("MY_REMOTE_KEY", "sk-env")
    assert read_api_key(RemoteSettings(url="http://x", api_key_env="MY_REMOTE_KEY")) == "sk-env"
    assert read_api_key(RemoteSettings(url="http://x")) is None
    with pytest.raises(ConfigError, match="names UNSET_REMOTE_KEY, which is not set"):
        read_api_key(RemoteSettings(url="http://x", api_key_env="UNSET_REMOTE_KEY"))
    with pytest.raises(ConfigError, match="cannot be read"):
        read_api_key(RemoteSettings(url="http://x", api_key_file=str(tmp_path / "missing")))
    key_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_api_key(RemoteSettings(url="http://x", api_key_file=str(key_file)))


def test_the_shown_url_drops_credentials() -> None:
    assert RemoteSettings(url="https://me:secret@gpu.box:8443").shown_url == "https://gpu.box:8443"
