"""The search loop: the files of a run directory and what each record contains.

This module also contains the helpers that the other search tests import: a small fake CIFAR-10
archive, a tiny search configuration and a way to run the command line in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mergenas import cli
from mergenas.search import SearchConfig, read_log, search

# The full reference data: MERGENAS_DATA if set, else the shared data folder beside the checkout.
REFERENCE_DATA = Path(
    os.environ.get("MERGENAS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
TABLE_FOLDER = REFERENCE_DATA / "nasbench201"
HAVE_TABLE = (TABLE_FOLDER / "nb201_test_accuracy.csv").is_file()
needs_table = pytest.mark.skipif(
    not HAVE_TABLE, reason=f"NAS-Bench-201 table not found under {REFERENCE_DATA}; set MERGENAS_DATA"
)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# A search small enough for tests: the ci preset's 1-cell-per-stage supernet with 4 channels,
# 64 images (32 per search half) in batches of 8, so 4 steps per epoch and 8 in all.
TINY = {"preset": "ci", "train_limit": 64, "batch_size": 8, "channels": 4, "epochs": 2}
STEPS_PER_EPOCH = 4
TINY_ARGS = [
    "--preset", "ci", "--train-limit", "64", "--batch-size", "8", "--channels", "4",
    "--epochs", "2", "--quiet",
]
TIMING_FIELDS = ("elapsed_s",)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def write_fake_cifar(path: Path, train_images: int = 64, test_images: int = 8, **overrides) -> Path:
    """Write a CIFAR-10-shaped .npz of random images at `path`; `overrides` replace arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (train_images, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, train_images, dtype=np.int64),
        "x_test": rng.integers(0, 256, (test_images, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, test_images, dtype=np.int64),
        "classes": np.array(CLASSES),
    }
    arrays.update(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def make_data_root(folder: Path, with_table: bool = True) -> Path:
    """Create a data root with a fake CIFAR-10 and, when available, the real benchmark table."""
    write_fake_cifar(folder / "cifar10" / "cifar10.npz")
    if with_table and HAVE_TABLE:
        (folder / "nasbench201").symlink_to(TABLE_FOLDER, target_is_directory=True)
    return folder


def tiny_config(data_root: Path, **changes) -> SearchConfig:
    return SearchConfig(**{**TINY, "data_root": str(data_root), **changes})


def run_cli(args: list[str], data_root: Path, extra_env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m mergenas.cli ARGS` in a subprocess with one CPU thread."""
    env = {
        **os.environ,
        "MERGENAS_DATA": str(data_root),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "mergenas.cli", *args],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def run_cli_forked(args: list[str], data_root: Path, extra_env: dict | None = None) -> int:
    """Run `mergenas ARGS` in a forked child and return its exit status (-N when killed by signal N).

    A fork skips the seconds that a new interpreter spends importing torch, so it suits tests that
    kill many runs. The child runs torch on one thread, as `run_cli` does.
    """
    pid = os.fork()
    if pid == 0:
        status = 99
        try:
            os.environ.update({"MERGENAS_DATA": str(data_root), **(extra_env or {})})
            torch.set_num_threads(1)
            status = cli.main(args)
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def without_timing(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in TIMING_FIELDS} for record in records]


def file_bytes(folder: Path) -> dict[str, bytes]:
    """Map each file name under `folder` to its content."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def one_thread():
    """Run torch on one thread, as the subprocesses do, so results match bit for bit.

    One thread is also much faster on a shared 2-core machine than two contending threads.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_root) -> Path:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    search(tiny_config(data_root), run_dir, progress=False)
    torch.set_num_threads(previous)
    return run_dir


def test_run_directory_files(tiny_run):
    names = sorted(path.name for path in tiny_run.iterdir())
    assert names == ["checkpoint.pt", "config.json", "log.jsonl", "result.json"]


def test_config_json_holds_resolved_settings(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    for key, value in TINY.items():
        assert config[key] == value
    assert config["cells_per_stage"] == 1  # filled from the ci preset
    assert config["seed"] == 0
    assert SearchConfig.from_dict(config).resolved() == SearchConfig.from_dict(config)


def test_log_has_one_record_per_epoch(tiny_run):
    records = read_log(tiny_run)
    assert [record["epoch"] for record in records] == [1, 2]
    expected = {"epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "alphas", "cell", "index", "nb201", "elapsed_s"}
    for record in records:
        assert expected <= set(record)


def test_log_alphas_are_softmax_rows(tiny_run):
    for record in read_log(tiny_run):
        alphas = np.array(record["alphas"])
        assert alphas.shape == (6, 5)
        assert np.allclose(alphas.sum(axis=1), 1.0, atol=1e-6)
        assert (alphas > 0).all()


def test_log_values_in_range(tiny_run):
    for record in read_log(tiny_run):
        assert 0.0 <= record["train_acc"] <= 100.0
        assert 0.0 <= record["valid_acc"] <= 100.0
        assert np.isfinite(record["train_loss"])
        assert np.isfinite(record["valid_loss"])
        assert record["elapsed_s"] >= 0.0
        assert record["cell"].count("+") == 2


@needs_table
def test_log_and_result_have_benchmark_accuracy(tiny_run):
    result = json.loads((tiny_run / "result.json").read_text())
    for entry in [*read_log(tiny_run), result]:
        assert 0 <= entry["index"] <= 15624
        assert set(entry["nb201"]) == {"cifar10", "cifar100", "imagenet16_120"}


def test_result_matches_last_epoch(tiny_run):
    result = json.loads((tiny_run / "result.json").read_text())
    last = read_log(tiny_run)[-1]
    assert {"cell", "index", "nb201", "alphas"} <= set(result)
    assert result["cell"] == last["cell"]
    assert result["index"] == last["index"]
    assert result["alphas"] == last["alphas"]
    assert result["epochs"] == 2


def test_checkpoint_holds_full_state(tiny_run):
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=False)
    for key in ("model", "weight_optimizer", "arch_optimizer", "scheduler", "rng", "data_order", "log", "config"):
        assert key in state
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["epoch"] == 2
    assert state["step"] == 0
    assert len(state["log"]) == 2
    assert state["scheduler"]["last_epoch"] == 2
    assert state["weight_optimizer"]["state"], "SGD momentum buffers are missing"
    assert state["arch_optimizer"]["state"], "Adam moments are missing"


def test_run_without_table_has_null_accuracy(tmp_path, one_thread):
    data_root = make_data_root(tmp_path / "data", with_table=False)
    result = search(tiny_config(data_root, epochs=1), tmp_path / "run", progress=False)
    assert result["index"] is None
    assert result["nb201"] is None


@needs_table
def test_lookup_9930_prints_accuracies(capsys):
    status = cli.main(["lookup", "9930", "--data-root", str(REFERENCE_DATA)])
    output = capsys.readouterr().out
    assert status == 0
    assert "94.36" in output
    assert "73.51" in output
    assert "46.34" in output
