"""Checks of the stored notebooks: structure, the ci preset of their outputs, and that nbval
catches a changed output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
SANITIZE = ROOT / "notebooks" / "nbval_sanitize.cfg"


def _tagged(notebook, tag):
    return [i for i, cell in enumerate(notebook.cells) if tag in cell.metadata.get("tags", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_structure(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"

    parameters = _tagged(notebook, "parameters")
    assert len(parameters) == 1, "exactly one cell must be tagged 'parameters'"
    assert 'preset = "cpu"' in notebook.cells[parameters[0]].source

    after = parameters[0] + 1
    injected = _tagged(notebook, "injected-parameters")
    assert injected == [after], "the stored copy must carry papermill's injected parameters"
    assert 'preset = "ci"' in notebook.cells[after].source
    check = notebook.cells[after + 1]
    assert check.cell_type == "code"
    assert "lab.check_parameters(globals()" in check.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_stored_without_errors(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code_cells), "store the notebook executed"
    errors = [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]
    assert errors == []


def _first_cells(source: Path, target: Path, marker: str) -> int:
    """Copy `source` up to the first cell containing `marker` and return that cell's index."""
    notebook = nbformat.read(source, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if marker in cell.source)
    notebook.cells = notebook.cells[: index + 1]
    nbformat.write(notebook, target)
    return index


def _nbval(path: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "--nbval", str(path), "--nbval-sanitize-with", str(SANITIZE),
               "--nbval-current-env", "-p", "no:cacheprovider", "-q"]
    return subprocess.run(command, cwd=path.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_nbval_fails_on_changed_output(tmp_path):
    notebook_path = ROOT / "notebooks" / "01_propositions.ipynb"
    copy = tmp_path / "01_propositions.ipynb"
    index = _first_cells(notebook_path, copy, "ops.pad_kernel(W, 7)")

    passed = _nbval(copy)
    assert passed.returncode == 0, passed.stdout[-2000:]

    notebook = nbformat.read(copy, as_version=4)
    output = notebook.cells[index].outputs[0]
    assert output.text == "True True\n"
    output.text = "True False\n"
    nbformat.write(notebook, copy)

    failed = _nbval(copy)
    assert failed.returncode != 0
    assert "True False" in failed.stdout
