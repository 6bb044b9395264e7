"""Tests of mergenas.benchmarks: the NAS-Bench-201 CSV table and the official-API wrapper."""

from __future__ import annotations

import inspect
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from mergenas.benchmarks import (
    CSV_COLUMNS,
    BenchmarkError,
    NB201Accuracy,
    NB201API,
    NB201Table,
    benchmark_from_path,
    load_table,
    table_path,
)
from mergenas.data import MissingDataError
from mergenas.spaces.nb201 import NUM_CELLS, OPS, Cell

REFERENCE_DATA = Path(
    os.environ.get("MERGENAS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
).expanduser()
needs_table = pytest.mark.skipif(
    not (REFERENCE_DATA / "nasbench201" / "nb201_test_accuracy.csv").is_file(),
    reason=f"NAS-Bench-201 table not found under {REFERENCE_DATA}; set MERGENAS_DATA",
)

INDEX_1 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
INDEX_9930 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
HEADER = ",".join(CSV_COLUMNS)

def published(value: float):
    """Match a published 2-decimal value against the table's 4-decimal one."""
    return pytest.approx(value, abs=0.005)


@pytest.fixture(scope="module")
def table() -> NB201Table:
    return load_table(REFERENCE_DATA)


def all_cell_strings() -> list[str]:
    """Every cell of the space, in a fixed order (not the benchmark's index order)."""
    return [Cell(ops).to_string() for ops in itertools.product(OPS, repeat=6)]


def write_table(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


# --- the reference table ---------------------------------------------------------------------


@needs_table
def test_table_index_1_cell(table):
    assert len(table) == NUM_CELLS
    assert table.cell_at(1).to_string() == INDEX_1
    assert table.index_of(INDEX_1) == 1


@needs_table
def test_table_round_trip_and_unique(table):
    arrays = table.to_arrays()
    assert len(set(arrays["arch"].tolist())) == NUM_CELLS
    for index in range(0, NUM_CELLS, 97):
        assert table.index_of(table.cell_at(index)) == index
    assert table.index_of(table.cell_at(NUM_CELLS - 1)) == NUM_CELLS - 1


@needs_table
def test_table_all_skip_cell(table):
    assert table.index_of(ALL_SKIP) == 1835
    accuracy = table.accuracy(1835)
    assert accuracy.cifar10 == published(54.30)
    assert accuracy.cifar100 == published(15.61)
    assert accuracy.imagenet16_120 == published(16.32)


@needs_table
def test_table_index_9930(table):
    assert table.index_of(INDEX_9930) == 9930
    accuracy = table.accuracy(INDEX_9930)
    assert accuracy.cifar10 == published(94.36)
    assert accuracy.cifar100 == published(73.51)
    assert accuracy.imagenet16_120 == published(46.34)


@needs_table
def test_table_best_cells(table):
    index, cell, accuracy = table.best("cifar10")
    assert index == 6111
    assert cell == table.cell_at(6111)
    assert accuracy.cifar10 == published(94.37)

    index, _, accuracy = table.best("imagenet16_120")
    assert index == 857
    assert accuracy.imagenet16_120 == published(47.31)
    assert table.best("ImageNet16-120")[0] == 857

    index, _, accuracy = table.best("cifar100")
    assert index == 9930
    assert accuracy.cifar100 == published(73.51)


@needs_table
def test_table_lookups_agree(table):
    by_cell = table.accuracy(Cell.from_string(INDEX_1))
    by_string = table.accuracy(INDEX_1)
    by_index = table.accuracy(1)
    by_numpy_index = table.accuracy(np.int64(1))
    assert by_cell == by_string == by_index == by_numpy_index
    assert by_index.to_dict() == {
        "cifar10": by_index.cifar10,
        "cifar100": by_index.cifar100,
        "imagenet16_120": by_index.imagenet16_120,
    }


@needs_table
def test_table_arrays_match_lookups(table):
    arrays = table.to_arrays()
    assert set(arrays) == {"arch", "cifar10", "cifar100", "imagenet16_120"}
    assert arrays["cifar100"].shape == (NUM_CELLS,)
    assert arrays["arch"][1] == INDEX_1
    assert arrays["imagenet16_120"][1835] == table.accuracy(1835).imagenet16_120


@needs_table
@pytest.mark.parametrize("index", [NUM_CELLS, -1])
def test_table_index_out_of_range(table, index):
    with pytest.raises(BenchmarkError) as caught:
        table.accuracy(index)
    assert str(index) in str(caught.value)
    assert "0..15624" in str(caught.value)
    with pytest.raises(BenchmarkError, match="0..15624"):
        table.cell_at(index)


@needs_table
def test_table_cell_outside_space(table):
    not_a_cell = INDEX_1.replace("avg_pool_3x3", "max_pool_3x3")
    with pytest.raises(BenchmarkError) as caught:
        table.accuracy(not_a_cell)
    assert not_a_cell in str(caught.value)
    with pytest.raises(BenchmarkError, match="has 1 node group separated"):
        table.index_of("|skip_connect~0|")


@needs_table
def test_table_unknown_dataset(table):
    with pytest.raises(BenchmarkError, match="'imagenet'"):
        table.best("imagenet")


@needs_table
def test_load_table_cached_and_env(monkeypatch, table):
    monkeypatch.setenv("MERGENAS_DATA", str(REFERENCE_DATA))
    assert load_table() is table
    assert NB201Table.load(REFERENCE_DATA).accuracy(1) == table.accuracy(1)


@needs_table
def test_benchmark_from_csv_path(table):
    benchmark = benchmark_from_path(table.source)
    assert isinstance(benchmark, NB201Table)
    assert benchmark.accuracy(9930) == table.accuracy(9930)


# --- table errors, on small fake tables ------------------------------------------------------


def test_table_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.delenv("MERGENAS_DATA", raising=False)
    with pytest.raises(MissingDataError) as caught:
        NB201Table.load(tmp_path)
    message = str(caught.value)
    assert str(tmp_path.resolve() / "nasbench201" / "nb201_test_accuracy.csv") in message
    assert "MERGENAS_DATA" in message
    assert "nas-bench-201" in message
    assert table_path(tmp_path) == tmp_path.resolve() / "nasbench201" / "nb201_test_accuracy.csv"


def test_table_missing_column(tmp_path):
    header = "index,arch,cifar10,cifar100"
    path = write_table(tmp_path / "t.csv", [f"0,{INDEX_1},90.0,70.0"], header=header)
    with pytest.raises(BenchmarkError) as caught:
        NB201Table.from_csv(path)
    assert "lacks the columns imagenet16_120" in str(caught.value)


def test_table_duplicate_cell(tmp_path):
    lines = [
        f"0,{INDEX_1},90.0,70.0,40.0",
        f"1,{ALL_SKIP},54.3,15.6,16.3",
        f"2,{INDEX_1},91.0,71.0,41.0",
    ]
    path = write_table(tmp_path / "t.csv", lines)
    with pytest.raises(BenchmarkError) as caught:
        NB201Table.from_csv(path)
    message = str(caught.value)
    assert f"cell {INDEX_1} appears twice" in message
    assert "lines 2 and 4" in message


def test_table_duplicate_index(tmp_path):
    lines = [f"0,{INDEX_1},90.0,70.0,40.0", f"0,{ALL_SKIP},54.3,15.6,16.3"]
    path = write_table(tmp_path / "t.csv", lines)
    with pytest.raises(BenchmarkError, match="index 0 appears twice, on lines 2 and 3"):
        NB201Table.from_csv(path)


def test_table_wrong_row_count(tmp_path):
    lines = [f"0,{INDEX_1},90.0,70.0,40.0", f"1,{ALL_SKIP},54.3,15.6,16.3"]
    path = write_table(tmp_path / "t.csv", lines)
    with pytest.raises(BenchmarkError, match="has 2 rows, expected .* \\(15625\\)"):
        NB201Table.from_csv(path)


def test_table_malformed_arch_names_line(tmp_path):
    lines = [f"0,{INDEX_1},90.0,70.0,40.0", "1,|skip_connect~0|+|oops|,54.3,15.6,16.3"]
    path = write_table(tmp_path / "t.csv", lines)
    with pytest.raises(BenchmarkError, match="line 3: invalid arch"):
        NB201Table.from_csv(path)


@pytest.mark.parametrize(
    "line, expected",
    [
        (f"15625,{INDEX_1},90.0,70.0,40.0", "index 15625 is outside 0..15624"),
        (f"x,{INDEX_1},90.0,70.0,40.0", "index 'x' is not an integer"),
        (f"0,{INDEX_1},90.0,n/a,40.0", "cifar100 'n/a' is not a number"),
        (f"0,{INDEX_1},190.0,70.0,40.0", "cifar10 accuracy 190.0 is outside 0..100"),
        (f"0,{INDEX_1},90.0,70.0", "expected 5 fields"),
        (f"0,{INDEX_1},90.0,70.0,40.0,1.0", "expected 5 fields"),
    ],
)
def test_table_bad_row_values(tmp_path, line, expected):
    path = write_table(tmp_path / "t.csv", [line])
    with pytest.raises(BenchmarkError, match=expected):
        NB201Table.from_csv(path)


def test_benchmark_from_unknown_suffix(tmp_path):
    with pytest.raises(BenchmarkError, match="benchmark format"):
        benchmark_from_path(tmp_path / "benchmark.json")


# --- the official API, through a stand-in ----------------------------------------------------


class RecordingAPI:
    """A stand-in for nas_201_api.NASBench201API that records the queries it receives.

    Only the calls NB201API makes exist here, with the installed package's signatures. Accuracy
    values encode the data set, so a query for the wrong data set returns a wrong number.
    """

    TEST = {"cifar10": 94.0, "cifar10-valid": 11.0, "cifar100": 73.0, "ImageNet16-120": 47.0}
    VALID = {"cifar10-valid": 91.0, "cifar100": 72.0, "ImageNet16-120": 46.0}

    def __init__(self, archs: list[str]):
        self.meta_archs = archs
        self.index_queries: list[object] = []
        self.info_queries: list[dict] = []

    def __len__(self):
        return len(self.meta_archs)

    def __getitem__(self, index):
        return self.meta_archs[index]

    def query_index_by_arch(self, arch):
        self.index_queries.append(arch)
        return self.meta_archs.index(arch) if arch in self.meta_archs else -1

    def get_more_info(self, index, dataset, iepoch=None, hp="12", is_random=True):
        self.info_queries.append(
            {"index": index, "dataset": dataset, "iepoch": iepoch, "hp": hp, "is_random": is_random}
        )
        info = {"train-accuracy": 99.0, "test-accuracy": self.TEST[dataset] + index / 10000}
        if dataset in self.VALID:
            info["valid-accuracy"] = self.VALID[dataset] + index / 10000
        return info


def test_stand_in_matches_installed_signatures():
    from nas_201_api import NASBench201API

    for name in ("get_more_info", "query_index_by_arch"):
        installed = list(inspect.signature(getattr(NASBench201API, name)).parameters)
        stand_in = list(inspect.signature(getattr(RecordingAPI, name)).parameters)
        assert installed == stand_in, name


def test_api_accuracy_queries_full_training_runs():
    fake = RecordingAPI([INDEX_1, ALL_SKIP])
    accuracy = NB201API(fake).accuracy(ALL_SKIP)
    assert accuracy.to_dict() == pytest.approx(
        {"cifar10": 94.0001, "cifar100": 73.0001, "imagenet16_120": 47.0001}
    )
    assert fake.index_queries == [ALL_SKIP]
    datasets = [query["dataset"] for query in fake.info_queries]
    assert datasets == ["cifar10", "cifar100", "ImageNet16-120"]
    for query in fake.info_queries:
        assert query["index"] == 1
        assert query["hp"] == "200"
        assert query["iepoch"] is None
        assert query["is_random"] is False


def test_api_accepts_cell_and_index():
    fake = RecordingAPI([INDEX_1, ALL_SKIP])
    api = NB201API(fake)
    assert api.accuracy(Cell.from_string(INDEX_1)) == api.accuracy(0)
    assert api.index_of(ALL_SKIP) == 1
    assert api.cell_at(1) == Cell.from_string(ALL_SKIP)
    assert len(api) == 2


def test_api_valid_accuracy_uses_cifar10_valid():
    fake = RecordingAPI([INDEX_1])
    accuracy = NB201API(fake).valid_accuracy(0)
    assert accuracy == NB201Accuracy(cifar10=91.0, cifar100=72.0, imagenet16_120=46.0)
    datasets = [query["dataset"] for query in fake.info_queries]
    assert datasets == ["cifar10-valid", "cifar100", "ImageNet16-120"]
    assert {query["hp"] for query in fake.info_queries} == {"200"}


def test_api_absent_cell_raises():
    api = NB201API(RecordingAPI([INDEX_1]))
    with pytest.raises(BenchmarkError) as caught:
        api.accuracy(ALL_SKIP)
    assert ALL_SKIP in str(caught.value)
    assert "not in the benchmark file" in str(caught.value)


def test_api_index_out_of_range():
    fake = RecordingAPI([INDEX_1])
    with pytest.raises(BenchmarkError, match="cell index 1 is outside .* 0..0"):
        NB201API(fake).accuracy(1)
    with pytest.raises(BenchmarkError, match="cell index -1 is outside"):
        NB201API(fake).accuracy(-1)
    assert fake.info_queries == []


def test_api_missing_metric_raises():
    class NoTestAPI(RecordingAPI):
        def get_more_info(self, index, dataset, iepoch=None, hp="12", is_random=True):
            return {"train-accuracy": 99.0}

    with pytest.raises(BenchmarkError, match="no 'test-accuracy'.*'cifar10'"):
        NB201API(NoTestAPI([INDEX_1])).accuracy(0)


def test_api_write_csv_round_trip(tmp_path):
    archs = all_cell_strings()
    path = NB201API(RecordingAPI(archs)).write_csv(tmp_path / "table.csv")
    table = NB201Table.from_csv(path)
    assert table.cell_at(7).to_string() == archs[7]
    assert table.accuracy(7).to_dict() == pytest.approx(
        {"cifar10": 94.0007, "cifar100": 73.0007, "imagenet16_120": 47.0007}
    )
    assert table.accuracy(NUM_CELLS - 1).cifar10 == pytest.approx(95.5624)


def test_api_from_file_missing(tmp_path):
    with pytest.raises(MissingDataError) as caught:
        NB201API.from_file(tmp_path / "NAS-Bench-201-v1_1-096897.pth")
    assert str(tmp_path.resolve() / "NAS-Bench-201-v1_1-096897.pth") in str(caught.value)
    assert "MERGENAS_DATA" in str(caught.value)


def test_api_from_file_is_lazy(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a benchmark file")
    api = benchmark_from_path(path)
    assert isinstance(api, NB201API)
    with pytest.raises(BenchmarkError, match="cannot unpickle the benchmark file"):
        api.accuracy(0)


def test_api_rejects_none():
    with pytest.raises(TypeError, match="from_file"):
        NB201API(None)
