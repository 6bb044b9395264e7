"""The `mergenas` command line: output, run-directory protection, resume options and exit statuses."""

from __future__ import annotations

import json

import pytest

from mergenas import cli
from mergenas.search import search
from test_search import (  # noqa: F401 (fixtures are used by name)
    REFERENCE_DATA,
    STEPS_PER_EPOCH,
    TINY_ARGS,
    data_root,
    file_bytes,
    needs_table,
    one_thread,
    tiny_config,
)


@pytest.fixture
def finished_run(tmp_path, data_root, one_thread):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=1), run_dir, progress=False)
    return run_dir


def search_help() -> str:
    parser = cli.build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    return subparsers.choices["search"].format_help()


def test_help_says_only_epochs_may_change():
    text = " ".join(search_help().split())
    assert "Only --epochs may differ from the stored settings" in text
    assert "130 (SIGINT)" in text


@needs_table
def test_lookup_json(capsys):
    assert cli.main(["lookup", "9930", "--json", "--data-root", str(REFERENCE_DATA)]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["index"] == 9930
    assert output["nb201"] == pytest.approx({"cifar10": 94.36, "cifar100": 73.51, "imagenet16_120": 46.34}, abs=0.005)


@needs_table
def test_lookup_by_cell_string(capsys):
    cell = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert cli.main(["lookup", cell, "--data-root", str(REFERENCE_DATA)]) == 0
    assert "index: 9930" in capsys.readouterr().out


def test_search_prints_result(tmp_path, data_root, one_thread, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["search", *TINY_ARGS, "--epochs", "1", "--data-root", str(data_root), "--out", str(run_dir)]) == 0
    output = capsys.readouterr().out
    result = json.loads((run_dir / "result.json").read_text())
    assert f"run directory: {run_dir}" in output
    assert f"cell:  {result['cell']}" in output


def test_finished_run_rejected_unchanged(finished_run, data_root, capsys):
    before = file_bytes(finished_run)
    status = cli.main(["search", *TINY_ARGS, "--data-root", str(data_root), "--out", str(finished_run)])
    stderr = capsys.readouterr().err
    assert status == 2
    assert "already contains a finished run" in stderr
    assert f"--resume {finished_run}" in stderr
    assert "--overwrite" in stderr
    assert file_bytes(finished_run) == before


def test_unfinished_run_rejected_unchanged(finished_run, data_root, capsys):
    (finished_run / "result.json").unlink()
    before = file_bytes(finished_run)
    status = cli.main(["search", *TINY_ARGS, "--data-root", str(data_root), "--out", str(finished_run)])
    assert status == 2
    assert "already contains an unfinished run" in capsys.readouterr().err
    assert file_bytes(finished_run) == before


def test_overwrite_replaces_run(finished_run, data_root, capsys):
    status = cli.main(["search", *TINY_ARGS, "--seed", "1", "--data-root", str(data_root), "--out", str(finished_run), "--overwrite", "--epochs", "1"])
    assert status == 0
    assert json.loads((finished_run / "config.json").read_text())["seed"] == 1
    assert json.loads((finished_run / "result.json").read_text())["seed"] == 1


def test_resume_with_different_settings_lists_them(finished_run, capsys):
    before = file_bytes(finished_run)
    status = cli.main(["search", "--resume", str(finished_run), "--seed", "3", "--batch-size", "16", "--method", "darts", "--epochs", "2"])
    stderr = capsys.readouterr().err
    assert status == 2
    assert "seed: stored 0, requested 3" in stderr
    assert "batch_size: stored 8, requested 16" in stderr
    assert "method: stored 'mergenas', requested 'darts'" in stderr
    assert "Only --epochs may change" in stderr
    assert file_bytes(finished_run) == before


def test_resume_with_same_settings_accepted(finished_run, capsys):
    status = cli.main(["search", "--resume", str(finished_run), *TINY_ARGS])
    assert status == 0
    assert "run directory" in capsys.readouterr().out
    assert json.loads((finished_run / "result.json").read_text())["epochs"] == 2


def test_resume_finished_prints_result(finished_run, capsys):
    before = file_bytes(finished_run)
    assert cli.main(["search", "--resume", str(finished_run), "--quiet"]) == 0
    assert "cell:" in capsys.readouterr().out
    assert file_bytes(finished_run) == before


@pytest.mark.parametrize(
    "extra, phrase",
    [(["--overwrite"], "--resume and --overwrite exclude each other"), (["--out", "elsewhere"], "differs from --resume")],
)
def test_resume_conflicting_options(finished_run, capsys, extra, phrase):
    before = file_bytes(finished_run)
    assert cli.main(["search", "--resume", str(finished_run), *extra]) == 2
    assert phrase in capsys.readouterr().err
    assert file_bytes(finished_run) == before


def test_interrupt_exit_status(tmp_path, data_root, one_thread, monkeypatch, capsys):
    monkeypatch.setenv("MERGENAS_TEST_KILL_AT_STEP", str(STEPS_PER_EPOCH + 1))
    monkeypatch.setenv("MERGENAS_TEST_KILL_SIGNAL", "TERM")
    run_dir = tmp_path / "run"
    status = cli.main(["search", *TINY_ARGS, "--data-root", str(data_root), "--out", str(run_dir)])
    stderr = capsys.readouterr().err
    assert status == 143
    assert "stopped by SIGTERM after step 1 of epoch 2" in stderr
    assert f"mergenas search --resume {run_dir}" in stderr


def test_test_hook_value_checked(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("MERGENAS_TEST_KILL_AT_STEP", "soon")
    status = cli.main(["search", *TINY_ARGS, "--data-root", str(data_root), "--out", str(tmp_path / "run")])
    assert status == 2
    assert "MERGENAS_TEST_KILL_AT_STEP='soon' is invalid" in capsys.readouterr().err
