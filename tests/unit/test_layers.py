"""The one-way rule of the house (docs/architecture.md): every import between top-level packages runs
downward, `pushplan` (the kernel) ← `features` ← `training` ← `dispatch`, `reports` ← `serving` ←
`cli`, at module level or inside a function. An AST walk over the sources keeps it true."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A package may import from any package of a lower rank, never from its own rank's others or above.
RANK = {"pushplan": 0, "features": 1, "training": 2, "dispatch": 3, "reports": 3, "serving": 4, "cli": 5}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, target in imported_packages(path):
            if target in RANK and target != package and RANK[target] >= RANK[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({package} may not)")
    return wrong


@pytest.mark.parametrize("package", list(RANK))
def test_imports_run_one_way_only(package: str) -> None:
    assert (ROOT / package).is_dir()
    assert violations(package) == []


def test_the_walk_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    source = tmp_path / "upward.py"
    source.write_text("def f():\n    from serving.planner import plan\n    import cli.main\n")
    assert imported_packages(source) == [(2, "serving"), (3, "cli")]


def test_importing_the_service_leaves_celery_unconfigured() -> None:
    """The Celery app reads the settings when first configured; a module that configures it at import
    (a task evaluated at module level) would fix a test run's or a server's broker before its settings
    are known, and send its tasks to another data dir's queue. Checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import serving.app, serving.routes.events, serving.routes.dispatch, cli.main\n"
        "from dispatch.celery_app import app\n"
        "raise SystemExit(1 if app.configured else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
