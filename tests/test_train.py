"""Tests of mergenas.train: cutout, resume, run-directory rules, NaN handling and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mergenas import train as train_module
from mergenas.checkpoint import NonFiniteLossError, load_checkpoint
from mergenas.cli import main
from mergenas.train import TrainConfig, TrainError, apply_cutout, resume, train

DATA_ROOT = str(os.environ.get("MERGENAS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (Path(DATA_ROOT) / "cifar10" / "cifar10.npz").exists(), reason=f"CIFAR-10 not found under {DATA_ROOT}"
)


def _tiny_config(**changes) -> TrainConfig:
    settings = dict(genotype="MERGENAS_PAPER", preset="ci", epochs=2, device="cpu", data_root=DATA_ROOT)
    settings.update(changes)
    return TrainConfig(**settings)


def test_cutout_zeroes_clipped_square():
    images = torch.ones(64, 3, 12, 12)
    out = apply_cutout(images, 4, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(dim=1)  # (B, H, W), the same square in every channel
    assert torch.equal((out == 0).any(dim=1), zeros)
    counts = zeros.flatten(1).sum(1)
    assert counts.max().item() == 16
    assert counts.min().item() >= 4  # a corner centre keeps a 2 x 2 part of the square
    for image in zeros:
        rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        assert image[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_cutout_size_zero_is_identity():
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(apply_cutout(images, 0, torch.Generator()), images)


@needs_data
def test_resume_is_bit_identical(tmp_path):
    whole = train(_tiny_config(), tmp_path / "whole", progress=False)
    assert train(_tiny_config(), tmp_path / "split", progress=False, stop_after_epoch=1) is None
    assert not (tmp_path / "split" / "result.json").exists()
    resumed = resume(tmp_path / "split", progress=False)

    state_whole = load_checkpoint(tmp_path / "whole")["model"]
    state_split = load_checkpoint(tmp_path / "split")["model"]
    for name, tensor in state_whole.items():
        assert torch.equal(tensor, state_split[name]), name
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    log_lines = (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log_lines] == [1, 2]


@needs_data
def test_finished_run_directory_rejected(tmp_path):
    config = _tiny_config(epochs=1)
    train(config, tmp_path, progress=False)
    with pytest.raises(TrainError, match="already contains a finished run"):
        train(config, tmp_path, progress=False)
    result = train(config, tmp_path, overwrite=True, progress=False)
    assert result["epochs"] == 1


@needs_data
def test_nan_loss_names_epoch_and_step(tmp_path, monkeypatch):
    calls = {"count": 0}
    original = train_module.apply_cutout

    def poisoned_cutout(images, size, generator):
        calls["count"] += 1
        out = original(images, size, generator)
        return out * float("nan") if calls["count"] == 4 else out  # epoch 1, step 1

    monkeypatch.setattr(train_module, "apply_cutout", poisoned_cutout)
    with pytest.raises(NonFiniteLossError, match="in step 2 of epoch 2"):
        train(_tiny_config(), tmp_path, progress=False)
    last_checkpoint = load_checkpoint(tmp_path)
    assert last_checkpoint["epoch"] == 1
    assert last_checkpoint["step"] == 0


def test_config_rejects_odd_channels():
    with pytest.raises(TrainError, match="channels must be even"):
        TrainConfig(preset="ci", channels=5).resolved()


def test_unknown_genotype_file_rejected(tmp_path, capsys):
    status = main(["train", "--genotype", str(tmp_path / "missing.json"), "--out", str(tmp_path / "run")])
    assert status == 2
    assert "neither a known name" in capsys.readouterr().err


@needs_data
def test_cli_train_ci_preset(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["train", "--preset", "ci", "--device", "cpu", "--quiet", "--data-root", DATA_ROOT, "--out", str(out)])
    assert status == 0
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["test_accuracy"] <= 100.0
    assert result["parameters_m"] > 0
    assert result["genotype"]["normal"][0] == ["sep_conv_3x3", 0]
    config = json.loads((out / "config.json").read_text())
    assert config["cells"] == 3
    assert config["genotype_value"]["space"] == "darts"
    assert "test error" in capsys.readouterr().out


def test_cli_resume_rejects_changed_settings(tmp_path, capsys):
    """`train --resume` with another seed or genotype lists the differences and touches nothing."""
    from mergenas import cli

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stored = {"genotype": "DARTS_V2", "preset": "ci", "seed": 0, "epochs": 1}
    (run_dir / "config.json").write_text(json.dumps(stored))
    before = (run_dir / "config.json").read_bytes()
    status = cli.main(["train", "--resume", str(run_dir), "--seed", "5", "--genotype", "MERGENAS_PAPER"])
    stderr = capsys.readouterr().err
    assert status == 2
    assert "seed: stored 0, requested 5" in stderr
    assert "genotype: stored 'DARTS_V2', requested 'MERGENAS_PAPER'" in stderr
    assert (run_dir / "config.json").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]
