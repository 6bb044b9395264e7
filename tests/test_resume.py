"""Checkpoint and resume: a search killed or stopped at any moment resumes to the same result.

A subprocess search kills itself at an exact moment through the test-only hooks
MERGENAS_TEST_KILL_AT_STEP / MERGENAS_TEST_KILL_AFTER_CHECKPOINT; the run is then resumed and
compared with an uninterrupted run, bit for bit (torch.equal), on one CPU thread.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mergenas import atomic, cli
from mergenas.checkpoint import RunInterrupted, interrupt_guard
from mergenas.search import SearchError, read_log, resume, search
from test_search import (  # noqa: F401 (fixtures are used by name)
    PROJECT_ROOT,
    STEPS_PER_EPOCH,
    TINY_ARGS,
    data_root,
    file_bytes,
    one_thread,
    run_cli,
    run_cli_forked,
    tiny_config,
    without_timing,
    write_fake_cifar,
)


def load_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


def assert_same_run(run_dir: Path, reference_dir: Path) -> None:
    """Check the final weights, alphas, optimiser states and logs of two runs are identical."""
    state, reference = load_state(run_dir), load_state(reference_dir)
    assert state["model"].keys() == reference["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(state["model"][name], tensor), f"{name} differs"
    for optimizer in ("weight_optimizer", "arch_optimizer"):
        for index, buffers in reference[optimizer]["state"].items():
            for key, value in buffers.items():
                assert torch.equal(torch.as_tensor(state[optimizer]["state"][index][key]), torch.as_tensor(value)), (
                    f"{optimizer} state {index}/{key} differs"
                )
    assert without_timing(read_log(run_dir)) == without_timing(read_log(reference_dir))
    result = json.loads((run_dir / "result.json").read_text())
    reference_result = json.loads((reference_dir / "result.json").read_text())
    assert result["alphas"] == reference_result["alphas"]
    assert result["cell"] == reference_result["cell"]


@pytest.fixture
def data_env(monkeypatch, data_root) -> Path:
    """Point MERGENAS_DATA at the fake data, as the subprocess runs saw it."""
    monkeypatch.setenv("MERGENAS_DATA", str(data_root))
    return data_root


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_root) -> Path:
    """An uninterrupted tiny search with seed 0, on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    search(tiny_config(data_root), run_dir, progress=False)
    torch.set_num_threads(previous)
    return run_dir


# (environment variable, value, what the run directory looks like after the kill)
KILL_POINTS = [
    ("MERGENAS_TEST_KILL_AT_STEP", "2", "mid epoch 1, before any checkpoint"),
    ("MERGENAS_TEST_KILL_AT_STEP", str(STEPS_PER_EPOCH), "last step of epoch 1, before its checkpoint"),
    ("MERGENAS_TEST_KILL_AFTER_CHECKPOINT", "1", "checkpoint of epoch 1 written, log line not"),
    ("MERGENAS_TEST_KILL_AT_STEP", str(STEPS_PER_EPOCH + 2), "mid epoch 2, after the epoch-1 checkpoint"),
    ("MERGENAS_TEST_KILL_AFTER_CHECKPOINT", "2", "last checkpoint written, log line and result not"),
]


@pytest.mark.parametrize("variable, value, moment", KILL_POINTS, ids=[point[2] for point in KILL_POINTS])
def test_sigkill_then_resume_matches(tmp_path, data_env, reference_run, one_thread, variable, value, moment):
    run_dir = tmp_path / "run"
    status = run_cli_forked(["search", *TINY_ARGS, "--out", str(run_dir)], data_env, {variable: value})
    assert status == -signal.SIGKILL
    assert not (run_dir / "result.json").exists()
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"

    resume(run_dir, progress=False)
    assert_same_run(run_dir, reference_run)


def test_repeated_kills_then_cli_resume(tmp_path, data_root, data_env, reference_run, one_thread):
    run_dir = tmp_path / "run"
    first = run_cli(["search", *TINY_ARGS, "--out", str(run_dir)], data_root, {"MERGENAS_TEST_KILL_AT_STEP": "3"})
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = run_cli(["search", "--resume", str(run_dir), "--quiet"], data_root, {"MERGENAS_TEST_KILL_AT_STEP": "7"})
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert load_state(run_dir)["epoch"] == 1
    assert len(read_log(run_dir)) == 1

    status = cli.main(["search", "--resume", str(run_dir), "--quiet"])
    assert status == 0
    assert_same_run(run_dir, reference_run)


@pytest.mark.parametrize("signal_name, exit_status", [("INT", 130), ("TERM", 143)])
def test_signal_mid_epoch_saves_step(tmp_path, data_root, reference_run, one_thread, monkeypatch, signal_name, exit_status):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("MERGENAS_TEST_KILL_AT_STEP", str(STEPS_PER_EPOCH + 1))
    monkeypatch.setenv("MERGENAS_TEST_KILL_SIGNAL", signal_name)
    # A background job starts with SIGINT ignored, so compare with what was there before.
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as caught:
        search(tiny_config(data_root), run_dir, progress=False)
    assert caught.value.exit_status == exit_status
    assert "after step 1 of epoch 2" in str(caught.value)
    assert f"--resume {run_dir}" in str(caught.value)
    state = load_state(run_dir)
    assert (state["epoch"], state["step"]) == (1, 1)
    assert state["train_sums"]["batches"] == 1
    assert state["valid_sums"]["batches"] == 1
    assert len(read_log(run_dir)) == 1
    assert not (run_dir / "result.json").exists()
    # The guard gives the handlers back once the run stops.
    assert signal.getsignal(signal.SIGINT) is handler_before

    monkeypatch.delenv("MERGENAS_TEST_KILL_AT_STEP")
    resume(run_dir, progress=False)
    assert_same_run(run_dir, reference_run)


def test_signal_at_epoch_end_stops_after_checkpoint(tmp_path, data_root, one_thread, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("MERGENAS_TEST_KILL_AT_STEP", str(STEPS_PER_EPOCH))
    monkeypatch.setenv("MERGENAS_TEST_KILL_SIGNAL", "INT")
    with pytest.raises(RunInterrupted):
        search(tiny_config(data_root), run_dir, progress=False)
    state = load_state(run_dir)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert len(read_log(run_dir)) == 1


def test_external_sigint_then_resume(tmp_path, data_root, data_env, reference_run, one_thread):
    """A real Ctrl-C from outside, at whatever step it lands, resumes to the same result."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "MERGENAS_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "mergenas.cli", "search", *TINY_ARGS, "--epochs", "2", "--out", str(run_dir)]
    process = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # log.jsonl appears once the run has installed its signal handlers.
    while not (run_dir / "log.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before SIGINT arrived")
    assert process.returncode == 130, stderr
    assert "--resume" in stderr

    resume(run_dir, progress=False)
    assert_same_run(run_dir, reference_run)


def test_resume_with_more_epochs(tmp_path, data_root, one_thread):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=1), run_dir, progress=False)
    result = resume(run_dir, progress=False, epochs=2)
    assert result["epochs"] == 2
    assert [record["epoch"] for record in read_log(run_dir)] == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 2
    assert load_state(run_dir)["scheduler"]["T_max"] == 2


def test_resume_finished_run_changes_nothing(tmp_path, data_root, one_thread):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=1), run_dir, progress=False)
    before = file_bytes(run_dir)
    result = resume(run_dir, progress=False)
    assert result == json.loads((run_dir / "result.json").read_text())
    assert file_bytes(run_dir) == before


def test_resume_below_done_epochs_rejected(tmp_path, data_root, one_thread):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=2), run_dir, progress=False)
    before = file_bytes(run_dir)
    with pytest.raises(SearchError, match="epochs must be an integer of at least 2"):
        resume(run_dir, progress=False, epochs=1)
    assert file_bytes(run_dir) == before


def test_resume_with_other_settings_rejected(tmp_path, data_root, one_thread):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=1), run_dir, progress=False)
    before = file_bytes(run_dir)
    with pytest.raises(SearchError) as caught:
        resume(run_dir, progress=False, settings={"seed": 1, "lr": 0.1, "epochs": 3, "batch_size": 8})
    message = str(caught.value)
    assert "seed: stored 0, requested 1" in message
    assert "lr: stored 0.025, requested 0.1" in message
    assert "batch_size" not in message  # equal to the stored value
    assert "epochs:" not in message  # safe to change
    assert "Only --epochs may change" in message
    assert file_bytes(run_dir) == before


def test_nan_keeps_last_good_checkpoint(tmp_path, data_root, one_thread):
    """A loss that turns NaN in epoch 2 leaves the epoch-1 checkpoint and log, and no result."""
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=1), run_dir, progress=False)
    (run_dir / "result.json").unlink()
    state = load_state(run_dir)
    for group in state["weight_optimizer"]["param_groups"]:
        group["lr"] = 1e30  # the next weight step blows the weights up
    atomic.save_torch(run_dir / "checkpoint.pt", state)
    good_checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    good_log = (run_dir / "log.jsonl").read_bytes()

    status = cli.main(["search", "--resume", str(run_dir), "--epochs", "2", "--quiet"])
    assert status == 1
    assert (run_dir / "checkpoint.pt").read_bytes() == good_checkpoint
    assert (run_dir / "log.jsonl").read_bytes() == good_log
    assert not (run_dir / "result.json").exists()


def test_nan_from_cli_names_step(tmp_path, data_env, one_thread, capsys):
    run_dir = tmp_path / "run"
    status = cli.main(["search", *TINY_ARGS, "--lr", "1e30", "--out", str(run_dir)])
    stderr = capsys.readouterr().err
    assert status == 1
    assert "loss became nan in step " in stderr
    assert "of epoch 1," in stderr
    assert "lower learning rate" in stderr
    assert not (run_dir / "result.json").exists()
    assert not (run_dir / "checkpoint.pt").exists()


def test_resume_from_moved_data(tmp_path, data_root, reference_run, one_thread):
    run_dir = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MERGENAS_TEST_KILL_AT_STEP", "5")
        patch.setenv("MERGENAS_TEST_KILL_SIGNAL", "INT")
        with pytest.raises(RunInterrupted):
            search(tiny_config(data_root), run_dir, progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(data_root, moved, symlinks=True)

    resume(run_dir, progress=False, settings={"data_root": str(moved)})
    assert json.loads((run_dir / "config.json").read_text())["data_root"] == str(moved)
    assert_same_run(run_dir, reference_run)


def test_resume_on_other_data_rejected(tmp_path, data_root, one_thread):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=1), run_dir, progress=False)
    other = tmp_path / "other"
    rng = np.random.default_rng(1)
    write_fake_cifar(other / "cifar10" / "cifar10.npz", x_train=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    before = file_bytes(run_dir)
    with pytest.raises(SearchError, match="other training data"):
        resume(run_dir, progress=False, epochs=2, settings={"data_root": str(other)})
    assert file_bytes(run_dir) == before


def test_edited_config_rejected(tmp_path, data_root, one_thread):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=1), run_dir, progress=False)
    config = json.loads((run_dir / "config.json").read_text())
    config["seed"] = 5
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(SearchError, match="does not match its checkpoint: seed: stored 0, requested 5"):
        resume(run_dir, progress=False, epochs=2)


def test_atomic_write_survives_sigkill(tmp_path):
    """A writer killed after writing half of a file leaves the old file whole."""
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old content")
    script = (
        "import os, signal, sys\n"
        "from mergenas import atomic\n"
        "with atomic.atomic_open(sys.argv[1], 'wb') as handle:\n"
        "    handle.write(b'new half')\n"
        "    handle.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script, str(target)], cwd=PROJECT_ROOT, timeout=60)
    assert completed.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old content"


def test_atomic_write_error_keeps_old_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("{}")
    with pytest.raises(ZeroDivisionError):
        with atomic.atomic_open(target) as handle:
            handle.write("half")
            1 / 0
    assert target.read_text() == "{}"
    assert [path.name for path in tmp_path.iterdir()] == ["config.json"]


def test_interrupt_guard_flags_signal_and_restores():
    before = signal.getsignal(signal.SIGTERM)
    with interrupt_guard() as guard:
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested
        assert guard.signal_name == "SIGTERM"
        with pytest.raises(RunInterrupted) as caught:
            guard.raise_if_requested("at step 3")
    assert caught.value.exit_status == 143
    assert "SIGTERM at step 3" in str(caught.value)
    assert signal.getsignal(signal.SIGTERM) == before


def test_interrupt_guard_second_signal_raises():
    with interrupt_guard():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(RunInterrupted, match="second SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
