"""The data scientists' notebooks (jupytext sources in notebooks/) run top to bottom on a small demo's data,
executed by nbclient in a real kernel, as `make notebooks` would open them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.test_cli import run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# What each notebook must print when it worked, beyond running without an error.
EXPECTED = {
    "01_explore.py": ["users,", "no history before", "opted in to push"],
    "02_train_and_compare.py": ["tracking URI: sqlite", "challenger v", "champion:"],
    "03_off_policy.py": ["sends by the uniform logging policy", "logged reward", "truth"],
    "04_uplift_report.py": ["clicked: +", "sample ratio check p =", "holdout users"],
}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tour on 1,200 users over 35 days: every artefact the notebooks read, made the README's way."""
    data = tmp_path_factory.mktemp("notebooks") / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PUSHPLAN_")}
    run("demo", "--users", "1200", "--days", "35", env={**clean, "PUSHPLAN_DATA_DIR": str(data)})
    return data


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_notebook_runs_top_to_bottom(name: str, small_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jupytext
    from nbclient import NotebookClient

    monkeypatch.setenv("PUSHPLAN_DATA_DIR", str(small_demo))  # the kernel inherits the environment
    notebook = jupytext.read(NOTEBOOKS / name)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on the first error

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code)
    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in code
        for output in cell.outputs
    )
    for expected in EXPECTED[name]:
        assert expected in text, f"{name} did not print {expected!r}"
    charts = sum("image/png" in output.get("data", {}) for cell in code for output in cell.outputs)
    assert charts >= 1, f"{name} drew no chart"
