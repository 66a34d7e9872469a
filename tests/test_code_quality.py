"""ruff (lint + format) and mypy stay clean, and imports point one way: CI fails otherwise."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


# Where each installed package's source lives (pyproject's package-dir: models/, tui/ and lsp/ are top level).
_PACKAGE_DIRS = {
    "localspec.models": ROOT / "models",
    "localspec.tui": ROOT / "tui",
    "localspec.lsp": ROOT / "lsp",
    "localspec": ROOT / "localspec",
}


def _source(module: str) -> Path | None:
    for package, folder in _PACKAGE_DIRS.items():
        if module == package or module.startswith(package + "."):
            rest = module[len(package) + 1 :].split(".") if module != package else []
            base = folder.joinpath(*rest)
            for candidate in (base / "__init__.py", base.with_suffix(".py")):
                if candidate.is_file():
                    return candidate
            return None
    return None


def _imports(module: str) -> set[str]:
    """First-party modules that `module` imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    return {name for name in _imported_names(module) if name.startswith("localspec") and _source(name)}


def _imported_names(module: str) -> set[str]:
    path = _source(module)
    if path is None:
        return set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    return found


def _reachable(start: str) -> set[str]:
    """Every first-party module `start` can import, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += _imports(module)
    return seen


def _modules(package: str) -> list[str]:
    init = _source(package)
    assert init is not None and init.name == "__init__.py", package
    folder = init.parent
    return [package] + [f"{package}.{path.stem}" for path in folder.glob("*.py") if path.stem != "__init__"]


def _in(package: str, modules: set[str]) -> set[str]:
    return {m for m in modules if m == package or m.startswith(package + ".")}


def test_the_import_graph_sees_lazy_imports() -> None:
    # The checks below rely on this: the CLI imports the client only inside a handler.
    assert "localspec.client" in _imports("localspec.cli.daemon")


def test_the_client_imports_nothing_from_the_daemon() -> None:
    assert _in("localspec.daemon", _reachable("localspec.client")) == set()


def test_the_daemon_imports_nothing_from_the_client() -> None:
    for module in _modules("localspec.daemon"):
        assert "localspec.client" not in _reachable(module), module


def test_the_package_root_holds_only_core_modules() -> None:
    # Subcommands live in localspec/cli/ (or in models/, tui/, lsp/ for their own areas), not next to the core.
    for module in _modules("localspec"):
        assert not module.endswith(("_cmd", ".model_paths")), module
    assert _in("localspec.cli", _reachable("localspec.daemon.app")) == set()


def test_the_tui_and_the_lsp_reach_the_daemon_only_through_the_client() -> None:
    for package in ("localspec.tui", "localspec.lsp"):
        for module in _modules(package):
            assert _in("localspec.daemon", _reachable(module)) == set(), module
            assert "httpx" not in _imported_names(module), module


def test_models_resolve_names_without_the_config_or_the_engine() -> None:
    # Its command-line module reads and writes config.toml and checks pairs with the engine: it is a caller.
    for module in _modules("localspec.models"):
        if module != "localspec.models.cli":
            reached = _reachable(module)
            assert _in("localspec.config", reached) | _in("localspec.engine", reached) == set(), module


# Measurements (a GPU's name, a timing in ms, a speedup such as "1.91x") belong in docs/BENCHMARKS.md; comments and
# docstrings say what the code does and why.
_MEASUREMENT = re.compile(r"\b(?:[AH]100|H200|L4|RTX ?\d{4})\b|\b\d+(?:\.\d+)? ?ms\b|\b\d+\.\d+x\b")


def _prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring in a file."""
    source = path.read_text(encoding="utf-8")
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                found.append((node.body[0].lineno, docstring))
    return found


def test_comments_and_docstrings_hold_no_measurements() -> None:
    notes = [
        f"{path.relative_to(ROOT)}:{line}: {match.group(0)}"
        for folder in _PACKAGE_DIRS.values()
        for path in sorted(folder.rglob("*.py"))
        for line, text in _prose(path)
        for match in _MEASUREMENT.finditer(text)
    ]
    assert notes == [], "measurements go to docs/BENCHMARKS.md:\n" + "\n".join(notes)
