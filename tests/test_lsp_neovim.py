"""Neovim's own LSP client (headless) gets localspec's suggestion: the text /v1/infill returns for the prompt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunningDaemon

from localspec.client import DaemonClient

SCRIPT = Path(__file__).parent / "lsp_neovim" / "complete.lua"


def test_neovim_builtin_lsp_client_receives_the_suggestion(daemon: RunningDaemon, tmp_path: Path) -> None:
    nvim = shutil.which("nvim")
    if nvim is None:
        pytest.fail(
            "Neovim is not installed: run .ci/install-system-deps (it runs `apt-get install -y neovim`)."
        )
    project = tmp_path / "project"
    project.mkdir()
    doc = "def mul(a, b):\n    return a\n\nprint('done')\n"
    (project / "main.py").write_text(doc, encoding="utf-8")
    offset = doc.index("a\n\n") + 1
    with DaemonClient(daemon.url, daemon.token) as client:
        expected = client.infill(
            doc[:offset],
            doc[offset:],
            filename="main.py",
            max_tokens=16,
            temperature=0.0,
            single_line=False,
            extra=[],
        )["content"]
    assert expected, "the tiny model should suggest something for this prompt"

    out = tmp_path / "report.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOCALSPEC_")}
    env.update(
        LOCALSPEC_HOME=str(daemon.home),
        LSP_TEST_OUT=str(out),
        LSP_TEST_FILE=str(project / "main.py"),
        LSP_TEST_LINE="1",
        LSP_TEST_CHARACTER="12",
        LSP_TEST_PYTHON=sys.executable,
    )
    command = [nvim, "--headless", "-n", "-i", "NONE", "-u", "NONE", "-c", f"luafile {SCRIPT}"]
    run = subprocess.run(command, env=env, cwd=project, capture_output=True, timeout=120)
    assert out.exists(), (
        f"Neovim wrote no report (exit {run.returncode}): {run.stderr.decode(errors='replace')}"
    )
    report = json.loads(out.read_text(encoding="utf-8"))

    assert report.get("error") is None, report["error"]
    [item] = report["completion"]["items"]
    assert item["textEdit"]["newText"] == "a" + expected
    assert item["textEdit"]["range"] == {
        "start": {"line": 1, "character": 11},
        "end": {"line": 1, "character": 12},
    }
    assert [entry["insertText"] for entry in report["inline"]["items"]] == [expected]
    # Neovim applied the edit itself: the buffer now holds the suggestion at the cursor.
    assert "\n".join(report["buffer"]) + "\n" == doc[:offset] + expected + doc[offset:]
