"""Tests of the DARTS-space helpers of mergenas.lab (notebooks 7 and 8) and the DARTS-cell plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from mergenas import lab, plots
from mergenas.spaces.darts import DARTS_V2, MERGENAS_PAPER, Genotype
from mergenas.spaces.darts_net import DartsEdge, DartsNetwork, MergedEdge

DATA_ROOT = str(os.environ.get("MERGENAS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (Path(DATA_ROOT) / "cifar10" / "cifar10.npz").exists(), reason=f"CIFAR-10 not found under {DATA_ROOT}"
)


# -- configs ----------------------------------------------------------------------------------


def test_darts_search_config_applies_presets():
    config = lab.darts_search_config("cpu", "mergenas")
    assert config.space == "darts"
    assert config.cells == 5
    assert config.train_limit == 256
    assert config.batch_size == 16
    assert config.device == "cpu"


def test_darts_search_config_deep_search():
    config = lab.darts_search_config("ci", "mergenas", cells=20)
    assert config.cells == 20
    assert config.train_limit == 16


def test_darts_search_config_paper_matches_paper():
    config = lab.darts_search_config("paper", "darts", order=2)
    assert (config.cells, config.epochs, config.batch_size, config.train_limit) == (8, 50, 64, None)
    assert config.order == 2
    assert config.device == "auto"


def test_darts_configs_reject_unknown_preset():
    with pytest.raises(lab.ParameterError, match="unknown preset 'gpu'"):
        lab.darts_search_config("gpu", "mergenas")
    with pytest.raises(lab.ParameterError, match="unknown preset 'gpu'"):
        lab.darts_train_config("gpu", "DARTS_V2")


def test_darts_train_config_paper_matches_paper():
    config = lab.darts_train_config("paper", "MERGENAS_PAPER")
    assert (config.cells, config.channels, config.epochs, config.batch_size) == (20, 36, 600, 96)
    assert config.train_limit is None
    assert config.test_limit is None


def test_describe_darts_preset_marks_differences():
    paper = lab.describe_darts_preset("paper", training=True)
    assert "differs" not in paper
    cpu = lab.describe_darts_preset("cpu", training=True)
    assert "cells: 5, paper 8   (differs from the paper)" in cpu
    assert "epochs: 3, paper 600   (differs from the paper)" in cpu
    assert "cells: 5, paper 20   (differs from the paper)" in cpu


# -- merged edge, parameters, memory ------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_merged_separable_error_is_float64_exact(stride):
    assert lab.merged_separable_error(stride=stride, channels=6, seed=3) < 1e-13


def test_separable_edge_parameters_match_modules():
    channels = 16
    counts = lab.separable_edge_parameters(channels)
    darts_edge = DartsEdge(channels, stride=1)
    separable = sum(
        p.numel() for name, p in darts_edge.named_parameters()
        if name.split(".")[1] in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    )
    assert counts["DARTS edge (sum)"] == separable
    merged = MergedEdge(channels, stride=1)
    assert counts["MergeNAS edge"] == merged.depthwise.numel() + merged.pointwise.numel()


def test_supernet_parameters_table():
    headers, rows = lab.supernet_parameters([3], channels=8)
    assert headers[0] == "cells"
    cells, darts, merged, ratio = rows[0]
    assert cells == 3
    assert merged < darts
    assert ratio == pytest.approx(merged / darts)


def test_search_memory_table_rows():
    headers, rows = lab.search_memory_table("ci", [3])
    assert [row[2] for row in rows] == ["DARTS", "MergeNAS"]
    assert all(row[1] == lab.MEMORY_BATCH["ci"] for row in rows)
    assert rows[1][3] < rows[0][3]


def test_evaluation_parameters_counts_without_auxiliary():
    counts = lab.evaluation_parameters({"paper": MERGENAS_PAPER}, channels=8, cells=5)
    network = DartsNetwork(MERGENAS_PAPER, channels=8, cells=5)
    assert counts["paper"] == network.num_parameters() / 1e6


def test_multiply_adds_exceed_stem_and_grow():
    # The stem convolution alone (3 -> 24 channels, 3x3, 8x8 outputs) bounds the total from below.
    total = lab.multiply_adds(DARTS_V2, channels=8, cells=3, image_size=8)
    stem = 24 * 8 * 8 * 3 * 9
    assert total > stem
    assert lab.multiply_adds(DARTS_V2, channels=8, cells=3, image_size=16) > total


# -- run cache --------------------------------------------------------------------------------


def test_darts_run_dir_layout():
    config = lab.darts_search_config("ci", "mergenas", order=2)
    path = lab.darts_run_dir("runs", config)
    assert path == Path("runs/ci/darts-space/mergenas-order2-cells3-seed0")


@needs_data
def test_cached_darts_search_then_loads(tmp_path):
    config = lab.darts_search_config("ci", "mergenas", data_root=DATA_ROOT)
    first = lab.cached_darts_search(config, tmp_path, progress=False)
    assert first.status == "searched"
    assert first.label == "MergeNAS order 1, 3 cells"
    second = lab.cached_darts_search(config, tmp_path, progress=False)
    assert second.status == "loaded"
    assert second.result["genotype"] == first.result["genotype"]


@needs_data
def test_cached_darts_search_rejects_other_settings(tmp_path):
    config = lab.darts_search_config("ci", "mergenas", data_root=DATA_ROOT)
    lab.cached_darts_search(config, tmp_path, progress=False)
    stored = tmp_path / "ci" / "darts-space" / "mergenas-order1-cells3-seed0" / "config.json"
    values = json.loads(stored.read_text())
    values["epochs"] = 7
    stored.write_text(json.dumps(values))
    with pytest.raises(lab.RunCacheError, match="epochs: cached 7, requested 1"):
        lab.cached_darts_search(config, tmp_path, progress=False)


@needs_data
def test_cached_training_trains_loads_and_checks_genotype(tmp_path):
    config = lab.darts_train_config("ci", "DARTS_V2", data_root=DATA_ROOT)
    first = lab.cached_training("darts-v2", config, tmp_path, progress=False)
    assert first.status == "trained"
    assert [record["epoch"] for record in first.records] == [1, 2]
    assert first.path == tmp_path / "ci" / "train" / "darts-v2-seed0"

    second = lab.cached_training("darts-v2", config, tmp_path, progress=False)
    assert second.status == "loaded"
    assert second.result["test_accuracy"] == first.result["test_accuracy"]

    other = lab.darts_train_config("ci", "MERGENAS_PAPER", data_root=DATA_ROOT)
    with pytest.raises(lab.RunCacheError, match="genotype_value"):
        lab.cached_training("darts-v2", other, tmp_path, progress=False)


@needs_data
def test_cached_training_resumes_unfinished_run(tmp_path):
    from mergenas import train

    config = lab.darts_train_config("ci", "DARTS_V2", data_root=DATA_ROOT)
    path = lab.training_run_dir(tmp_path, "ci", "darts-v2", 0)
    assert train.train(config, path, progress=False, stop_after_epoch=1) is None
    resumed = lab.cached_training("darts-v2", config, tmp_path, progress=False)
    assert resumed.status == "resumed"
    assert resumed.result["epochs"] == 2


# -- tables -----------------------------------------------------------------------------------


def _fake_training(name, error):
    result = {"test_error": error, "test_accuracy": 100.0 - error, "parameters_m": 0.5}
    return lab.Training(name=name, path=Path(name), result=result, records=[], status="loaded")


def test_table1_pairs_ours_with_paper():
    names = [name for _, name, _ in lab.TABLE1_ROWS]
    trainings = {name: _fake_training(name, 10.0 + i) for i, name in enumerate(names)}
    evaluation = {name: 2.5 for name in names}
    headers, rows = lab.table1(trainings, evaluation)
    assert len(headers) == 6
    assert len(rows) == 9  # four methods with a paper row, the reconstructed cell without
    assert rows[0][:3] == ["DARTS, 1st order", "ours", 10.0]
    assert rows[1][1:3] == ["paper", "3.00 ± 0.14"]
    assert rows[-1][0] == "MergeNAS, Figure 2 cell (reconstructed)"


def test_table3_rows_and_missing_training():
    trainings = {"mergenas-order1": _fake_training("mergenas-order1", 20.0)}
    headers, rows = lab.table3(trainings, {"mergenas-order1": 2.4}, {"mergenas-order1": 5})
    assert rows == [
        ["shallow supernet, 1st order", "ours", 5, 80.0, 0.5, 2.4],
        ["shallow supernet, 1st order", "paper", 8, 97.27, None, 2.87],
    ]


# -- plots ------------------------------------------------------------------------------------


def test_draw_darts_cell_labels_every_edge():
    figure = plots.draw_darts_cell(MERGENAS_PAPER.normal, MERGENAS_PAPER.normal_concat)
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert labels.count("sep_conv_3x3") == 7
    assert labels.count("sep_conv_5x5") == 1
    assert "$c_{k}$" in labels
    plt.close(figure)


def test_plot_darts_genotypes_and_learning_curves():
    genotype = Genotype.from_dict(DARTS_V2.to_dict())
    figure = plots.plot_darts_genotypes({"a": genotype, "b": MERGENAS_PAPER})
    assert len(figure.axes) == 4
    plt.close(figure)
    records = [{"epoch": 1, "train_loss": 2.0, "train_acc": 10.0}, {"epoch": 2, "train_loss": 1.5, "train_acc": 30.0}]
    figure = plots.plot_learning_curves({"net": records})
    assert len(figure.axes[0].lines) == 1
    plt.close(figure)
