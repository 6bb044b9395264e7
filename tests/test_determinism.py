"""Determinism on the CPU: the same seed and settings give the same logs, alphas and cells."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mergenas.search import read_log, search
from test_search import (  # noqa: F401 (fixtures are used by name)
    TINY_ARGS,
    data_root,
    one_thread,
    run_cli,
    tiny_config,
    without_timing,
)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_root):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("first") / "run"
    search(tiny_config(data_root), run_dir, progress=False)
    torch.set_num_threads(previous)
    return run_dir


def final_alphas(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]["alphas"]


def test_same_process_runs_identical(tmp_path, data_root, first_run, one_thread):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root), run_dir, progress=False)
    assert without_timing(read_log(run_dir)) == without_timing(read_log(first_run))
    assert torch.equal(final_alphas(run_dir), final_alphas(first_run))
    assert json.loads((run_dir / "result.json").read_text())["cell"] == json.loads((first_run / "result.json").read_text())["cell"]


def test_subprocess_run_identical(tmp_path, data_root, first_run):
    run_dir = tmp_path / "run"
    completed = run_cli(["search", *TINY_ARGS, "--out", str(run_dir), "--data-root", str(data_root)], data_root)
    assert completed.returncode == 0, completed.stderr
    assert without_timing(read_log(run_dir)) == without_timing(read_log(first_run))
    assert torch.equal(final_alphas(run_dir), final_alphas(first_run))


def test_other_seed_differs(tmp_path, data_root, first_run, one_thread):
    """The comparison above can fail: another seed gives other alphas."""
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, seed=1), run_dir, progress=False)
    assert not torch.equal(final_alphas(run_dir), final_alphas(first_run))


def test_deterministic_flag_same_on_cpu(tmp_path, data_root, first_run, one_thread):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, deterministic=True), run_dir, progress=False)
    assert not torch.are_deterministic_algorithms_enabled(), "the run did not restore the global setting"
    records, reference = read_log(run_dir), read_log(first_run)
    assert np.array_equal(np.array(records[-1]["alphas"]), np.array(reference[-1]["alphas"]))
    assert torch.equal(final_alphas(run_dir), final_alphas(first_run))
