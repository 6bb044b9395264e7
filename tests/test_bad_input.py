"""Bad input: each gets an error that names the input and the fix, a non-zero exit status, and
leaves existing run directories as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mergenas import cli
from mergenas.search import SearchError, resume, search
from mergenas.spaces.nb201 import OPS, Cell, CellError
from test_search import (  # noqa: F401 (fixtures are used by name)
    REFERENCE_DATA,
    TABLE_FOLDER,
    TINY_ARGS,
    data_root,
    file_bytes,
    needs_table,
    one_thread,
    tiny_config,
    write_fake_cifar,
)

VALID = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"

# (cell string, a phrase the error must contain)
BAD_CELLS = [
    ("nor_conv_3x3~0+nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "must start and end with '|'"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3|", "not of the form op~k"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~|", "not of the form op~k"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~2|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "names input node 2, expected 0"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~3|", "names input node 3, expected 2"),
    ("|conv_7x7~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "unknown operation 'conv_7x7'"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "has 1 edges, expected 2"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|none~3|", "has 4 edges, expected 3"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "has 2 node groups"),
    (VALID + "+|none~0|", "has 4 node groups"),
    ("|nor_conv_3x3~0| +|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "contains whitespace"),
    (" " + VALID, "contains whitespace"),
    ("", "has 1 node group separated"),
]


@pytest.mark.parametrize("text, phrase", BAD_CELLS)
def test_cell_parser_rejects(text, phrase):
    with pytest.raises(CellError) as caught:
        Cell.from_string(text)
    assert phrase in str(caught.value)


@pytest.mark.parametrize("text, phrase", BAD_CELLS[:6] + BAD_CELLS[10:11])
def test_lookup_rejects_bad_cell(capsys, text, phrase):
    status = cli.main(["lookup", "--data-root", "/nonexistent", "--", text])
    stderr = capsys.readouterr().err
    assert status == 2
    assert phrase in stderr
    assert repr(text) in stderr


@pytest.mark.parametrize("index", ["-1", "15625", "99999999999"])
def test_lookup_rejects_index_out_of_range(capsys, index):
    status = cli.main(["lookup", "--data-root", "/nonexistent", "--", index])
    stderr = capsys.readouterr().err
    assert status == 2
    assert f"cell index {int(index)} is outside the NAS-Bench-201 range 0..15624" in stderr


@needs_table
def test_lookup_accepts_range_ends(capsys):
    for index in ("0", "15624"):
        assert cli.main(["lookup", index, "--json", "--data-root", str(REFERENCE_DATA)]) == 0
        assert json.loads(capsys.readouterr().out)["index"] == int(index)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_cell_parser_fuzz_arbitrary_text(text):
    try:
        cell = Cell.from_string(text)
    except CellError:
        return
    assert cell.to_string() == text


CELL_ALPHABET = st.sampled_from(list("|+~0123456789 _\n") + list(OPS))


@st.composite
def mutated_cells(draw):
    """A valid cell string with characters or tokens deleted, replaced or inserted."""
    text = Cell(tuple(draw(st.lists(st.sampled_from(OPS), min_size=6, max_size=6)))).to_string()
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "replace", "insert"]))
        piece = draw(CELL_ALPHABET)
        if kind == "delete":
            text = text[:position] + text[position + 1:]
        elif kind == "replace":
            text = text[:position] + piece + text[position + 1:]
        else:
            text = text[:position] + piece + text[position:]
    return text


@settings(max_examples=500, deadline=None)
@given(mutated_cells())
def test_cell_parser_fuzz_mutations(text):
    try:
        cell = Cell.from_string(text)
    except CellError:
        return
    assert cell.to_string() == text


# -- data archives ------------------------------------------------------------------------------


def _bad_archive(folder: Path, kind: str) -> Path:
    npz = folder / "cifar10" / "cifar10.npz"
    if kind == "missing":
        folder.mkdir(parents=True)
    elif kind == "truncated":
        write_fake_cifar(npz)
        npz.write_bytes(npz.read_bytes()[:1000])
    elif kind == "wrong shape":
        write_fake_cifar(npz, x_train=np.zeros((64, 32, 32), dtype=np.uint8))
    elif kind == "labels out of range":
        write_fake_cifar(npz, y_train=np.full(64, 10, dtype=np.int64))
    elif kind == "missing key":
        write_fake_cifar(npz)
        with np.load(npz) as archive:
            arrays = {key: archive[key] for key in archive.files if key != "y_test"}
        np.savez(npz, **arrays)
    return folder


# (kind, phrases the message must contain)
BAD_ARCHIVES = [
    ("missing", ["CIFAR-10 not found", "MERGENAS_DATA", "--data-root"]),
    ("truncated", ["truncated or not a NumPy .npz archive", "replace it"]),
    ("wrong shape", ["'x_train'", "expected shape (N, 32, 32, 3)"]),
    ("labels out of range", ["'y_train'", "expected 0..9"]),
    ("missing key", ["lacks the keys y_test"]),
]


@pytest.mark.parametrize("kind, phrases", BAD_ARCHIVES, ids=[case[0] for case in BAD_ARCHIVES])
def test_search_rejects_bad_archive(tmp_path, capsys, kind, phrases):
    bad_root = _bad_archive(tmp_path / "data", kind)
    run_dir = tmp_path / "run"
    status = cli.main(["search", *TINY_ARGS, "--data-root", str(bad_root), "--out", str(run_dir)])
    stderr = capsys.readouterr().err
    assert status == 2
    for phrase in phrases:
        assert phrase in stderr
    assert str(bad_root) in stderr
    assert not run_dir.exists()


def test_overwrite_with_bad_archive_keeps_old_run(tmp_path, data_root, one_thread, capsys):
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=1), run_dir, progress=False)
    before = file_bytes(run_dir)
    bad_root = _bad_archive(tmp_path / "bad", "truncated")
    status = cli.main(["search", *TINY_ARGS, "--data-root", str(bad_root), "--out", str(run_dir), "--overwrite"])
    assert status == 2
    assert "truncated" in capsys.readouterr().err
    assert file_bytes(run_dir) == before


def test_train_limit_above_archive_size(tmp_path, data_root, capsys):
    status = cli.main(["search", *TINY_ARGS, "--train-limit", "1000", "--data-root", str(data_root), "--out", str(tmp_path / "run")])
    assert status == 2
    assert "train_limit 1000 exceeds the 64 training images" in capsys.readouterr().err


# -- benchmark table ----------------------------------------------------------------------------


def _table_root(folder: Path, kind: str) -> Path:
    rows = (TABLE_FOLDER / "nb201_test_accuracy.csv").read_text().splitlines()
    if kind == "missing column":
        rows = [",".join(row.split(",")[:-1]) for row in rows]
    elif kind == "duplicate cell":
        rows[2] = rows[2].split(",", 1)[0] + "," + rows[1].split(",", 1)[1]
    (folder / "nasbench201").mkdir(parents=True)
    (folder / "nasbench201" / "nb201_test_accuracy.csv").write_text("\n".join(rows) + "\n")
    return folder


@needs_table
@pytest.mark.parametrize(
    "kind, phrase",
    [("missing column", "lacks the columns imagenet16_120"), ("duplicate cell", "appears twice, on lines 2 and 3")],
)
def test_lookup_rejects_bad_table(tmp_path, capsys, kind, phrase):
    root = _table_root(tmp_path / "data", kind)
    status = cli.main(["lookup", "9930", "--data-root", str(root)])
    stderr = capsys.readouterr().err
    assert status == 2
    assert phrase in stderr
    assert "nb201_test_accuracy.csv" in stderr


def test_lookup_without_table(tmp_path, capsys):
    status = cli.main(["lookup", "9930", "--data-root", str(tmp_path)])
    stderr = capsys.readouterr().err
    assert status == 2
    assert "nb201_test_accuracy.csv" in stderr


# -- settings -----------------------------------------------------------------------------------

# (extra arguments, the phrase the error must contain)
BAD_SETTINGS = [
    (["--epochs", "0"], "epochs must be an integer of at least 1, got 0"),
    (["--batch-size", "0"], "batch_size must be an integer of at least 1, got 0"),
    (["--seed", "-1"], "seed must be an integer of at least 0, got -1"),
    (["--lr", "-0.1"], "lr must be a finite number greater than 0, got -0.1"),
    (["--lr", "nan"], "lr must be a finite number greater than 0, got nan"),
    (["--arch-lr", "inf"], "arch_lr must be a finite number greater than 0, got inf"),
    (["--weight-decay", "-1"], "weight_decay must be a finite number at least 0"),
    (["--train-limit", "10"], "train_limit must be an integer of at least 16 (one batch per search half)"),
    (["--channels", "0"], "channels must be an integer of at least 1"),
]


@pytest.mark.parametrize("extra, phrase", BAD_SETTINGS, ids=[" ".join(case[0]) for case in BAD_SETTINGS])
def test_search_rejects_bad_setting(tmp_path, data_root, capsys, extra, phrase):
    run_dir = tmp_path / "run"
    status = cli.main(["search", *TINY_ARGS, *extra, "--data-root", str(data_root), "--out", str(run_dir)])
    assert status == 2
    assert phrase in capsys.readouterr().err
    assert not run_dir.exists()


def test_unknown_preset_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["search", "--preset", "huge", "--out", str(tmp_path / "run")])
    assert caught.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_unknown_preset_in_api():
    with pytest.raises(SearchError, match="unknown preset 'huge'"):
        tiny_config(Path("/nonexistent"), preset="huge").resolved()


def test_out_is_a_file(tmp_path, data_root, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    status = cli.main(["search", *TINY_ARGS, "--data-root", str(data_root), "--out", str(target)])
    assert status == 2
    assert "is a file, not a run directory" in capsys.readouterr().err
    assert target.read_text() == "keep me"


# -- damaged run directories --------------------------------------------------------------------


@pytest.fixture
def finished_copy(tmp_path, data_root, one_thread) -> Path:
    run_dir = tmp_path / "run"
    search(tiny_config(data_root, epochs=1), run_dir, progress=False)
    return run_dir


def test_resume_missing_dir(tmp_path, capsys):
    status = cli.main(["search", "--resume", str(tmp_path / "nothing")])
    assert status == 2
    assert "contains no run to resume (config.json not found)" in capsys.readouterr().err


def test_resume_corrupt_config(finished_copy, capsys):
    (finished_copy / "config.json").write_text("{not json")
    before = file_bytes(finished_copy)
    status = cli.main(["search", "--resume", str(finished_copy), "--epochs", "2"])
    assert status == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err
    assert file_bytes(finished_copy) == before


def test_resume_unknown_setting_in_config(finished_copy, capsys):
    config = json.loads((finished_copy / "config.json").read_text())
    config["colour"] = "blue"
    (finished_copy / "config.json").write_text(json.dumps(config))
    status = cli.main(["search", "--resume", str(finished_copy), "--epochs", "2"])
    assert status == 2
    assert "unknown search settings ['colour']" in capsys.readouterr().err


def test_resume_truncated_checkpoint(finished_copy, capsys):
    checkpoint = finished_copy / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    before = file_bytes(finished_copy)
    status = cli.main(["search", "--resume", str(finished_copy), "--epochs", "2", "--quiet"])
    assert status == 2
    stderr = capsys.readouterr().err
    assert "cannot read the checkpoint" in stderr
    assert "--overwrite" in stderr
    assert file_bytes(finished_copy) == before


def test_resume_foreign_checkpoint(finished_copy, capsys):
    import torch

    torch.save({"weights": 1}, finished_copy / "checkpoint.pt")
    status = cli.main(["search", "--resume", str(finished_copy), "--epochs", "2", "--quiet"])
    assert status == 2
    assert "is not a search checkpoint: it lacks the keys format, config" in capsys.readouterr().err


# -- genotype of the wrong space ----------------------------------------------------------------


def test_train_rejects_nb201_result(finished_copy, tmp_path, capsys):
    pytest.importorskip("mergenas.train")
    status = cli.main(["train", "--genotype", str(finished_copy / "result.json"), "--out", str(tmp_path / "train"), "--quiet"])
    stderr = capsys.readouterr().err
    assert status != 0
    assert "result.json" in stderr
    assert "nb201" in stderr
    assert not (tmp_path / "train" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "space, setting, message",
    [
        ("nb201", {"cells": 3}, "cells applies to the other search space"),
        ("darts", {"cells_per_stage": 3}, "cells_per_stage applies to the other search space"),
        ("darts", {"merge_parameter_free": False}, "drop --separate-parameter-free"),
    ],
)
def test_setting_of_other_space_rejected(space, setting, message):
    from mergenas.search import SearchConfig, SearchError

    with pytest.raises(SearchError, match=message):
        SearchConfig(space=space, preset="ci", **setting).resolved()
