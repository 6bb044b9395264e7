"""Tests of mergenas.lab: parameter checks, notebook presets, the run cache, the proposition
checks, Table 2 and Figure 3 layout, and atomic saving of figures and tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from mergenas import lab
from mergenas.benchmarks import NB201Accuracy

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SPEC = {"preset": str, "epochs": int | None, "seeds": list[int], "weight_decay": float,
        "data_root": str | None, "progress": bool}
GOOD = {"preset": "cpu", "epochs": None, "seeds": [0, 1, 2], "weight_decay": 2e-2,
        "data_root": None, "progress": True}


# -- parameters -------------------------------------------------------------------------------


def test_check_parameters_accepts_defaults():
    assert lab.check_parameters(GOOD, SPEC) == GOOD
    assert lab.check_parameters({**GOOD, "epochs": 3, "weight_decay": 1}, SPEC)["epochs"] == 3


@pytest.mark.parametrize(
    "name, value, expected_type",
    [
        ("epochs", "4", "int | None"),
        ("epochs", True, "int | None"),
        ("seeds", [0, "1"], "list[int]"),
        ("seeds", 0, "list[int]"),
        ("weight_decay", "2e-2", "float"),
        ("progress", 1, "bool"),
        ("preset", 3, "str"),
    ],
)
def test_check_parameters_wrong_type(name, value, expected_type):
    with pytest.raises(lab.ParameterError) as error:
        lab.check_parameters({**GOOD, name: value}, SPEC)
    message = str(error.value)
    assert f"parameter {name!r}" in message
    assert expected_type in message
    assert repr(value) in message


def test_check_parameters_unknown_preset():
    with pytest.raises(lab.ParameterError, match=r"'preset' must be one of ci, cpu, paper, got 'gpu'"):
        lab.check_parameters({**GOOD, "preset": "gpu"}, SPEC)


def test_check_parameters_missing_name():
    namespace = dict(GOOD)
    del namespace["seeds"]
    with pytest.raises(lab.ParameterError, match="'seeds' is not defined"):
        lab.check_parameters(namespace, SPEC)


# -- presets ----------------------------------------------------------------------------------


def test_search_config_applies_notebook_preset():
    config = lab.search_config("ci", "mergenas", 2e-2, seed=1)
    for key, value in lab.SEARCH_PRESETS["ci"].items():
        assert getattr(config, key) == value
    assert config.weight_decay == 2e-2
    assert config.seed == 1
    assert lab.search_config("ci", "darts", 1e-2, 0, epochs=5).epochs == 5


def test_search_config_paper_matches_paper():
    config = lab.search_config("paper", "darts", 2e-2, 0)
    assert (config.epochs, config.batch_size, config.train_limit, config.cells_per_stage) == (50, 64, None, 5)


def test_describe_preset_marks_differences():
    text = lab.describe_preset("cpu")
    assert "epochs: 6, paper 50   (differs from the paper)" in text
    assert "differs" not in lab.describe_preset("paper").replace("second order", "")
    with pytest.raises(lab.ParameterError, match="unknown preset 'fast'"):
        lab.describe_preset("fast")


# -- run cache --------------------------------------------------------------------------------


def _fake_run(path: Path, config, with_result: bool = True) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config.to_dict()))
    record = {"epoch": 1, "alphas": [[0.2] * 5] * 6, "cell": "c", "index": 1,
              "nb201": {"cifar10": 90.0, "cifar100": 70.0, "imagenet16_120": 40.0}}
    (path / "log.jsonl").write_text(json.dumps(record) + "\n")
    if with_result:
        (path / "result.json").write_text(json.dumps({"cell": "c", "elapsed_s": 1.0}))


def test_run_dir_layout(tmp_path):
    assert lab.run_dir(tmp_path, "cpu", "darts", 2e-2, 1) == tmp_path / "cpu" / "darts-wd0.02-seed1"


def test_cached_search_loads_finished_run(tmp_path, monkeypatch):
    config = lab.search_config("ci", "darts", 2e-2, 0)
    _fake_run(lab.run_dir(tmp_path, "ci", "darts", 2e-2, 0), config)
    monkeypatch.setattr(lab, "search", lambda *args, **kwargs: pytest.fail("searched again"))
    run = lab.cached_search(config, tmp_path, progress=False)
    assert run.status == "loaded"
    assert run.result["cell"] == "c"
    assert len(run.records) == 1


def test_cached_search_resumes_unfinished_run(tmp_path, monkeypatch):
    config = lab.search_config("ci", "darts", 2e-2, 0)
    path = lab.run_dir(tmp_path, "ci", "darts", 2e-2, 0)
    _fake_run(path, config, with_result=False)
    resumed = []
    monkeypatch.setattr(lab, "resume", lambda run_dir, progress: resumed.append(run_dir) or {"cell": "r"})
    run = lab.cached_search(config, tmp_path, progress=False)
    assert run.status == "resumed"
    assert resumed == [path]


def test_cached_search_searches_missing_run(tmp_path, monkeypatch):
    config = lab.search_config("ci", "mergenas", 1e-2, 2)
    calls = []
    monkeypatch.setattr(lab, "search", lambda cfg, path, progress: calls.append((cfg, path)) or {"cell": "s"})
    run = lab.cached_search(config, tmp_path, progress=False)
    assert run.status == "searched"
    assert calls == [(config, lab.run_dir(tmp_path, "ci", "mergenas", 1e-2, 2))]


def test_cached_search_rejects_other_settings(tmp_path):
    stored = lab.search_config("ci", "darts", 2e-2, 0, epochs=3)
    _fake_run(lab.run_dir(tmp_path, "ci", "darts", 2e-2, 0), stored)
    with pytest.raises(lab.RunCacheError, match="epochs: cached 3, requested 2"):
        lab.cached_search(lab.search_config("ci", "darts", 2e-2, 0), tmp_path, progress=False)


# -- propositions -----------------------------------------------------------------------------


def test_every_proposition_case_is_exact():
    rows = lab.verify_propositions()
    assert len(rows) == len(lab.proposition_cases())
    worst = max(rows, key=lambda row: row["max_rel_error"])
    assert worst["max_rel_error"] < 1e-10, worst
    assert all(entry["below_tolerance"] for entry in lab.summarise_propositions(rows))


def test_max_relative_error_detects_difference():
    import torch

    reference = torch.ones(3, dtype=torch.float64)
    assert lab.max_relative_error(reference * 1.5, reference) == pytest.approx(0.5)


def test_avg_pool_border_ratio():
    ratio = lab.avg_pool_border_ratio(side=6)
    assert ratio[0, 0].item() == pytest.approx(4 / 9)
    assert ratio[0, 2].item() == pytest.approx(6 / 9)
    assert ratio[1:-1, 1:-1].sub(1).abs().max().item() < 1e-12


# -- saving -----------------------------------------------------------------------------------


def test_save_figure_writes_png(tmp_path):
    figure, ax = plt.subplots()
    ax.plot([0, 1])
    path = lab.save_figure(figure, "line", tmp_path)
    plt.close(figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.png"]


def test_save_figure_keeps_old_file_on_failure(tmp_path, monkeypatch):
    (tmp_path / "line.png").write_bytes(b"old")
    figure, _ = plt.subplots()

    def fail(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="render failed"):
        lab.save_figure(figure, "line", tmp_path)
    plt.close(figure)
    assert (tmp_path / "line.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.png"]


def test_save_table_writes_markdown_and_csv(tmp_path):
    text = lab.save_table("t", ["a", "b"], [["x", 1.23456], ["y", None]], tmp_path)
    assert text == "| a | b |\n| --- | --- |\n| x | 1.23 |\n| y |  |\n"
    assert (tmp_path / "t.md").read_text() == text
    assert (tmp_path / "t.csv").read_text() == "a,b\nx,1.23456\ny,\n"


# -- Table 2 and Figure 3 ---------------------------------------------------------------------


class _FakeBenchmark:
    def best(self, dataset):
        values = {"cifar10": 94.37, "cifar100": 73.51, "imagenet16_120": 47.31}
        accuracy = NB201Accuracy(**{name: (values[name] if name == dataset else 0.0) for name in values})
        return 0, None, accuracy


def _fake_runs(seeds=(0, 1, 2)):
    runs = {}
    for method in ("darts", "mergenas"):
        for decay in (1e-2, 2e-2):
            for seed in seeds:
                accuracy = {"cifar10": 90.0 + seed, "cifar100": 70.0, "imagenet16_120": 40.0}
                records = [{"epoch": t + 1, "nb201": {**accuracy, "cifar10": 80.0 + t}} for t in range(3)]
                config = lab.search_config("ci", method, decay, seed)
                runs[(method, decay, seed)] = lab.Run(Path("."), {"nb201": accuracy}, records, "loaded", config)
    return runs


def test_table2_layout():
    headers, rows = lab.table2(_fake_runs(), _FakeBenchmark(), [0, 1, 2])
    assert headers == ["method", "source", "trial 1", "trial 2", "trial 3", "C10 avg", "C100 test", "IN16 test"]
    assert rows[0] == ["DARTS (wd 0.01)", "ours", 90.0, 91.0, 92.0, 91.0, 70.0, 40.0]
    assert rows[1] == ["DARTS (wd 0.01)", "paper", 80.57, 93.31, 88.21, 87.36, 59.80, 35.58]
    assert rows[7][:2] == ["MergeNAS (wd 0.02)", "paper"]
    assert rows[8] == ["optimal cell", "benchmark", None, None, None, 94.37, 73.51, 47.31]
    assert len(rows) == 10


def test_table2_rejects_run_without_accuracy():
    runs = _fake_runs()
    runs[("darts", 1e-2, 0)].result["nb201"] = None
    with pytest.raises(lab.RunCacheError, match="no NAS-Bench-201 accuracies"):
        lab.table2(runs, _FakeBenchmark(), [0, 1, 2])


def test_stability_curves_and_table():
    curves = lab.stability_curves(_fake_runs(seeds=(0, 1)))
    assert curves[("mergenas", 2e-2)] == [[80.0, 81.0, 82.0], [80.0, 81.0, 82.0]]
    headers, rows = lab.stability_table(curves)
    assert headers[-1] == "epoch 3"
    assert rows[0] == ["DARTS (wd 0.01)", 2, 80.0, 81.0, 82.0]


# -- notebooks under papermill ----------------------------------------------------------------


def _execute_with(tmp_path, parameters):
    papermill = pytest.importorskip("papermill")
    output = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(
            str(NOTEBOOKS / "01_propositions.ipynb"), str(output), parameters=parameters,
            kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
        )
    return error.value


def test_papermill_bad_preset_fails_at_check(tmp_path):
    error = _execute_with(tmp_path, {"preset": "gpu"})
    assert error.ename == "ParameterError"
    assert "'preset' must be one of ci, cpu, paper, got 'gpu'" in error.evalue


def test_papermill_bad_type_names_parameter(tmp_path):
    error = _execute_with(tmp_path, {"preset": "ci", "tolerance": "small"})
    assert error.ename == "ParameterError"
    assert "parameter 'tolerance' must be of type float, got 'small' of type str" in error.evalue


def test_saliency_widget_redraws_on_slider():
    """Moving an alpha slider re-renders the M~ image that the widget shows."""
    from mergenas import ops, plots

    names = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    box = plots.saliency_widget(ops.op_masks(names, 9), dict.fromkeys(names, 0.25))
    slider_box, image = box.children
    first = bytes(image.value)
    assert first.startswith(b"\x89PNG")
    slider_box.children[-1].value = 0.9  # the dil_conv_5x5 alpha
    second = bytes(image.value)
    assert second.startswith(b"\x89PNG")
    assert second != first
