"""The wheel a user gets from `pip install .`: built from a copy of the source, installed into a clean venv.

CI otherwise only sees the editable install, where every folder of the checkout is importable whether or
not the wheel ships it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where each installed package's files come from in the checkout (see setup.py).
SOURCES = {
    "localspec": "localspec",
    "localspec/models": "models",
    "localspec/tui": "tui",
    "localspec/lsp": "lsp",
}
SUBCOMMANDS = ("complete", "serve", "status", "stop", "config", "models", "chat", "lsp", "bench")


def _source_files() -> set[str]:
    """Installed paths of every .py file in the checkout's packages."""
    found = set()
    for installed, folder in SOURCES.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found.add(f"{installed}/{path.relative_to(REPO / folder).as_posix()}")
    return found


def test_the_wheel_ships_every_module_and_every_subcommand_runs_from_a_clean_venv(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("localspec-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    missing = _source_files() - shipped
    assert not missing, f"the wheel lacks {sorted(missing)}"
    assert {"localspec/models/catalog.toml", "localspec/tui/chat.tcss"} <= shipped

    # A venv without the checkout: localspec comes from the wheel alone. Its dependencies come from this
    # test's environment through a path entry; that folder's .pth files (the editable install's hook into
    # the checkout) are not run, so the checkout cannot leak in.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        timeout=300,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("LOCALSPEC_")}
    env["LOCALSPEC_HOME"] = str(tmp_path / "home")

    where = subprocess.run(
        [str(python), "-c", "import localspec.benchmark as b; print(b.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    for command in SUBCOMMANDS:
        result = subprocess.run(
            [str(venv / "bin" / "localspec"), command, "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, f"localspec {command} --help: {result.stderr}"
        assert f"usage: localspec {command}" in result.stdout
