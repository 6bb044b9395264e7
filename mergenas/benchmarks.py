"""NAS-Bench-201 look-ups: the test accuracy of any cell of the search space.

Two back ends serve the same `accuracy(cell)` call:

- `NB201Table` reads `<data root>/nasbench201/nb201_test_accuracy.csv` (15,625 rows: index, arch,
  cifar10, cifar100, imagenet16_120), small enough to ship beside the code.
- `NB201API` wraps the official benchmark file (`NAS-Bench-201-v1_1-096897.pth`) through the
  `nas-bench-201` package and also gives validation accuracies.

Accuracies are top-1 test accuracy in percent after 200 training epochs, averaged over the
benchmark's seeds. Source: Dong & Yang, "NAS-Bench-201", ICLR 2020.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np

from mergenas.data import MissingDataError, resolve_data_root
from mergenas.spaces.nb201 import NUM_CELLS, Cell, CellError, parse_cell

logger = logging.getLogger(__name__)

NB201_DIR = "nasbench201"
NB201_CSV = "nb201_test_accuracy.csv"
NB201_OFFICIAL_FILE = "NAS-Bench-201-v1_1-096897.pth"

# Column names of the table, which are also the field names of NB201Accuracy.
DATASETS = ("cifar10", "cifar100", "imagenet16_120")
CSV_COLUMNS = ("index", "arch") + DATASETS
# The names the benchmark itself uses, accepted wherever a data set is named.
_DATASET_ALIASES = {"ImageNet16-120": "imagenet16_120"}

CellOrIndex = Union[Cell, str, int]


class BenchmarkError(ValueError):
    """A cell, index or table that the NAS-Bench-201 look-up cannot serve."""


@dataclass(frozen=True)
class NB201Accuracy:
    """Accuracy in percent of one cell on each of the benchmark's three data sets."""

    cifar10: float
    cifar100: float
    imagenet16_120: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class Benchmark(Protocol):
    """The look-ups that the search and the notebooks use from a NAS-Bench-201 back end."""

    def accuracy(self, cell_or_index: CellOrIndex) -> NB201Accuracy: ...

    def index_of(self, cell: Cell | str) -> int: ...


def _dataset_field(dataset: str) -> str:
    field = _DATASET_ALIASES.get(dataset, dataset)
    if field not in DATASETS:
        raise BenchmarkError(
            f"unknown data set {dataset!r}; expected one of {', '.join(DATASETS)} "
            f"(or 'ImageNet16-120')"
        )
    return field


def _check_index(index: int) -> int:
    if not 0 <= index < NUM_CELLS:
        raise BenchmarkError(
            f"cell index {index} is outside the NAS-Bench-201 range 0..{NUM_CELLS - 1}"
        )
    return index


def _parse_cell(cell: Cell | str) -> Cell:
    try:
        return parse_cell(cell)
    except CellError as error:
        message = f"{cell!r} is not a cell of the NAS-Bench-201 space: {error}"
        raise BenchmarkError(message) from error


def _is_index(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class NB201Table:
    """The test accuracies of all 15,625 NAS-Bench-201 cells, read from a CSV file.

    Row `i` contains the cell with benchmark index `i`. The constructor checks that there are
    15,625 distinct cells, so every cell of the space has exactly one row.
    """

    def __init__(
        self, cells: list[Cell], accuracies: np.ndarray, source: Path | None = None
    ) -> None:
        if len(cells) != NUM_CELLS or accuracies.shape != (NUM_CELLS, len(DATASETS)):
            raise BenchmarkError(
                f"a NAS-Bench-201 table needs {NUM_CELLS} cells and accuracies of shape "
                f"({NUM_CELLS}, {len(DATASETS)}), got {len(cells)} cells and shape "
                f"{accuracies.shape}"
            )
        self._cells = list(cells)
        self._index_by_string = {cell.to_string(): index for index, cell in enumerate(cells)}
        if len(self._index_by_string) != NUM_CELLS:
            raise BenchmarkError("the cells of a NAS-Bench-201 table must all be distinct")
        self._accuracies = np.array(accuracies, dtype=np.float64)
        self._accuracies.flags.writeable = False
        self.source = source

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "NB201Table":
        """Read and check a table with the columns index, arch, cifar10, cifar100, imagenet16_120.

        Raises MissingDataError when the file does not exist and BenchmarkError for a missing
        column, a malformed row, a duplicate index or cell, or a row count other than 15,625.
        """
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise MissingDataError(_missing_table_message(path))
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [column for column in CSV_COLUMNS if column not in columns]
            if missing:
                raise BenchmarkError(
                    f"{path} lacks the columns {', '.join(missing)}; its header is "
                    f"{', '.join(columns) or '(empty)'}, expected {', '.join(CSV_COLUMNS)}"
                )
            rows = [_parse_row(path, reader.line_num, row) for row in reader]

        _check_unique(path, "index", [(index, line) for line, index, _, _ in rows])
        _check_unique(path, "cell", [(cell.to_string(), line) for line, _, cell, _ in rows])
        if len(rows) != NUM_CELLS:
            raise BenchmarkError(
                f"{path} has {len(rows)} rows, expected one per NAS-Bench-201 cell ({NUM_CELLS}); "
                f"the file is incomplete or not the NAS-Bench-201 table"
            )

        # With 15,625 distinct indices, each inside 0..15624, the indices are exactly that range.
        cells: list[Cell] = [None] * NUM_CELLS  # type: ignore[list-item]
        accuracies = np.empty((NUM_CELLS, len(DATASETS)), dtype=np.float64)
        for _, index, cell, values in rows:
            cells[index] = cell
            accuracies[index] = values
        logger.info("loaded the NAS-Bench-201 table from %s", path)
        return cls(cells, accuracies, source=path)

    @classmethod
    def load(cls, data_root: str | os.PathLike | None = None) -> "NB201Table":
        """Read `<data root>/nasbench201/nb201_test_accuracy.csv` (see `resolve_data_root`)."""
        return cls.from_csv(table_path(data_root))

    def __len__(self) -> int:
        return len(self._cells)

    def index_of(self, cell: Cell | str) -> int:
        """Return the benchmark index of a Cell or cell string."""
        return self._index_by_string[_parse_cell(cell).to_string()]

    def cell_at(self, index: int) -> Cell:
        return self._cells[_check_index(int(index))]

    def accuracy(self, cell_or_index: CellOrIndex) -> NB201Accuracy:
        """Return the test accuracy (%) of a Cell, a cell string or a benchmark index."""
        if _is_index(cell_or_index):
            index = _check_index(int(cell_or_index))
        else:
            index = self.index_of(cell_or_index)
        return NB201Accuracy(*(float(value) for value in self._accuracies[index]))

    def best(self, dataset: str) -> tuple[int, Cell, NB201Accuracy]:
        """Return (index, cell, accuracy) of the cell with the highest test accuracy on `dataset`.

        `dataset` is cifar10, cifar100 or imagenet16_120 (also written ImageNet16-120). Of cells
        that tie, the one with the lowest index wins.
        """
        column = DATASETS.index(_dataset_field(dataset))
        index = int(np.argmax(self._accuracies[:, column]))
        return index, self._cells[index], self.accuracy(index)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Return the table as arrays indexed by benchmark index, for plots and statistics.

        Keys: `arch` (cell strings) and one float64 array of accuracies (%) per data set.
        """
        arrays = {"arch": np.array([cell.to_string() for cell in self._cells])}
        for column, dataset in enumerate(DATASETS):
            arrays[dataset] = self._accuracies[:, column].copy()
        return arrays


def _parse_row(path: Path, line: int, row: dict[str, str]) -> tuple[int, int, Cell, list[float]]:
    """Parse one CSV row into (line, index, cell, accuracies), naming the line on errors."""
    where = f"{path}, line {line}"
    if None in row or any(row[column] is None for column in CSV_COLUMNS):
        raise BenchmarkError(
            f"{where}: expected {len(CSV_COLUMNS)} fields, the row has a different count"
        )
    try:
        index = int(row["index"])
    except ValueError as error:
        raise BenchmarkError(f"{where}: index {row['index']!r} is not an integer") from error
    if not 0 <= index < NUM_CELLS:
        raise BenchmarkError(f"{where}: index {index} is outside 0..{NUM_CELLS - 1}")
    try:
        cell = Cell.from_string(row["arch"])
    except CellError as error:
        raise BenchmarkError(f"{where}: invalid arch: {error}") from error
    values = []
    for dataset in DATASETS:
        try:
            value = float(row[dataset])
        except ValueError as error:
            raise BenchmarkError(f"{where}: {dataset} {row[dataset]!r} is not a number") from error
        if not (math.isfinite(value) and 0.0 <= value <= 100.0):
            raise BenchmarkError(f"{where}: {dataset} accuracy {value} is outside 0..100 (%)")
        values.append(value)
    return line, index, cell, values


def _check_unique(path: Path, what: str, keyed_lines: list[tuple[Any, int]]) -> None:
    first_line: dict[Any, int] = {}
    for key, line in keyed_lines:
        if key in first_line:
            raise BenchmarkError(
                f"{path}: {what} {key} appears twice, on lines {first_line[key]} and {line}; "
                f"each {what} must have exactly one row"
            )
        first_line[key] = line


def table_path(data_root: str | os.PathLike | None = None) -> Path:
    """Return where the table is looked for: `<data root>/nasbench201/nb201_test_accuracy.csv`."""
    return resolve_data_root(data_root) / NB201_DIR / NB201_CSV


def _missing_table_message(path: Path) -> str:
    return (
        f"NAS-Bench-201 table not found: looked for {path}. Set the environment variable "
        f"MERGENAS_DATA or pass --data-root (data_root=...) to a folder that contains "
        f"{NB201_DIR}/{NB201_CSV}, or use the official benchmark file {NB201_OFFICIAL_FILE} "
        f"(package nas-bench-201): `mergenas lookup --benchmark-file FILE` on the command line, "
        f"NB201API.from_file in Python; NB201API.write_csv creates the table from it."
    )


_TABLE_CACHE: dict[Path, NB201Table] = {}


def load_table(data_root: str | os.PathLike | None = None) -> NB201Table:
    """Return the NAS-Bench-201 table of the data root, reading the file once per process."""
    path = table_path(data_root)
    table = _TABLE_CACHE.get(path)
    if table is None:
        table = NB201Table.from_csv(path)
        _TABLE_CACHE[path] = table
    return table


# Data set names of the official API for test accuracy. 'cifar10' is the network trained on the
# full 50,000 training images and tested on the 10,000 test images. 'cifar10-valid' is trained on
# half of the training set only, so its numbers are not the CIFAR-10 test accuracy.
_API_TEST_DATASETS = {
    "cifar10": "cifar10", "cifar100": "cifar100", "imagenet16_120": "ImageNet16-120",
}
# For validation accuracy CIFAR-10 needs 'cifar10-valid', because the 'cifar10' runs have no
# held-out set.
_API_VALID_DATASETS = {
    "cifar10": "cifar10-valid", "cifar100": "cifar100", "imagenet16_120": "ImageNet16-120",
}
_API_HP = "200"


class NB201API:
    """NAS-Bench-201 look-ups through the official benchmark file and the `nas_201_api` package.

    Calls made, checked against the source of the nas-bench-201 2.1 package (`nas_201_api`):

    - `api.query_index_by_arch(arch_string)`, which returns -1 for a string outside the space;
      this class raises BenchmarkError instead.
    - `api.get_more_info(index, dataset, iepoch=None, hp='200', is_random=False)`, reading its
      `test-accuracy` or `valid-accuracy` entry.

    Pitfalls that this class avoids:

    - CIFAR-10 test accuracy comes from dataset 'cifar10' (trained on the full training set).
      'cifar10-valid' is trained on half of it and is the source only of CIFAR-10 validation
      accuracy.
    - `hp` defaults to '12' in the package, a 12-epoch schedule; published numbers use '200'.
    - `is_random` defaults to True in `get_more_info`, which returns one random seed's run;
      False averages the seeds, as the published numbers do.

    For CIFAR-100 and ImageNet16-120 the package computes `test-accuracy` on the benchmark's
    test half of the original test set ('x-test') and `valid-accuracy` on the other half
    ('x-valid').
    """

    def __init__(self, api: Any) -> None:
        """Wrap an existing `nas_201_api.NASBench201API` object (or one with the same methods)."""
        if api is None:
            raise TypeError(
                "NB201API needs an API object; use NB201API.from_file(path) to open a file"
            )
        self._api = api
        self._path: Path | None = None
        self._allow_pickle = False

    @classmethod
    def from_file(cls, path: str | os.PathLike, allow_pickle: bool = False) -> "NB201API":
        """Wrap the benchmark file at `path`, which is read at the first query, not here.

        PyTorch 2.6 and later load files with `weights_only=True`, which may reject objects
        inside the official file. Pass `allow_pickle=True` to load it with full unpickling,
        which runs code stored in the file, so do so only for a file from a trusted source.
        NOTE: with `allow_pickle=True` the file's contents are held twice in memory while the API
        is built, because `NASBench201API` deep-copies a dict that it is given.
        """
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise MissingDataError(
                f"NAS-Bench-201 benchmark file not found: looked for {path}. Get "
                f"{NB201_OFFICIAL_FILE} from the NAS-Bench-201 project, or use the CSV table "
                f"{NB201_DIR}/{NB201_CSV} under the data root (environment variable "
                f"MERGENAS_DATA or --data-root) with NB201Table."
            )
        wrapper = cls.__new__(cls)
        wrapper._api = None
        wrapper._path = path
        wrapper._allow_pickle = allow_pickle
        return wrapper

    @property
    def api(self) -> Any:
        """The wrapped `nas_201_api.NASBench201API`, built from the file on first use."""
        if self._api is None:
            self._api = self._open_file()
        return self._api

    def _open_file(self) -> Any:
        from nas_201_api import NASBench201API

        logger.info("reading the NAS-Bench-201 benchmark file %s", self._path)
        try:
            if self._allow_pickle:
                import torch

                contents = torch.load(self._path, map_location="cpu", weights_only=False)
                return NASBench201API(contents, verbose=False)
            return NASBench201API(str(self._path), verbose=False)
        except pickle.UnpicklingError as error:
            hint = "" if self._allow_pickle else (
                " If the file is complete and comes from a trusted source, open it with "
                "NB201API.from_file(path, allow_pickle=True)."
            )
            message = f"cannot unpickle the benchmark file {self._path}: {error}.{hint}"
            raise BenchmarkError(message) from error
        except AssertionError as error:
            # nas_201_api checks the file's top-level keys with assert statements.
            raise BenchmarkError(
                f"{self._path} is not a NAS-Bench-201 benchmark file: {error}"
            ) from error

    def __len__(self) -> int:
        return len(self.api)

    def index_of(self, cell: Cell | str) -> int:
        """Return the benchmark index of a Cell or cell string."""
        arch = _parse_cell(cell).to_string()
        index = self.api.query_index_by_arch(arch)
        if index == -1:
            raise BenchmarkError(f"cell {arch} is not in the benchmark file's search space")
        return int(index)

    def cell_at(self, index: int) -> Cell:
        return Cell.from_string(self.api[self._checked_index(index)])

    def _checked_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise BenchmarkError(
                f"cell index {index} is outside the benchmark file's range 0..{len(self) - 1}"
            )
        return index

    def _resolve(self, cell_or_index: CellOrIndex) -> int:
        if _is_index(cell_or_index):
            return self._checked_index(cell_or_index)
        return self.index_of(cell_or_index)

    def _query(self, index: int, datasets: dict[str, str], key: str) -> NB201Accuracy:
        values = []
        for field in DATASETS:
            info = self.api.get_more_info(
                index, datasets[field], iepoch=None, hp=_API_HP, is_random=False
            )
            if info.get(key) is None:
                raise BenchmarkError(
                    f"the benchmark file has no {key!r} for cell index {index} on "
                    f"{datasets[field]!r} (hp={_API_HP})"
                )
            values.append(float(info[key]))
        return NB201Accuracy(*values)

    def accuracy(self, cell_or_index: CellOrIndex) -> NB201Accuracy:
        """Return the seed-averaged test accuracy (%) after 200 epochs on each data set."""
        return self._query(self._resolve(cell_or_index), _API_TEST_DATASETS, "test-accuracy")

    def valid_accuracy(self, cell_or_index: CellOrIndex) -> NB201Accuracy:
        """Return the seed-averaged validation accuracy (%) after 200 epochs.

        The `cifar10` field comes from the 'cifar10-valid' runs, which train on half of the
        CIFAR-10 training set and validate on the other half. The CSV table has no such column.
        """
        return self._query(self._resolve(cell_or_index), _API_VALID_DATASETS, "valid-accuracy")

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write the test accuracies of all cells as the CSV table that NB201Table reads.

        Values are rounded to 4 decimals.
        """
        path = Path(path).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        count = len(self)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for index in range(count):
                arch = Cell.from_string(self.api[index]).to_string()
                accuracy = self._query(index, _API_TEST_DATASETS, "test-accuracy")
                values = [f"{getattr(accuracy, field):.4f}" for field in DATASETS]
                writer.writerow([index, arch, *values])
        logger.info("wrote the test accuracies of %d cells to %s", count, path)
        return path


def benchmark_from_path(path: str | os.PathLike, allow_pickle: bool = False) -> Benchmark:
    """Open a benchmark by file suffix: `.csv` as NB201Table, `.pth` as NB201API.

    `allow_pickle` applies to `.pth` files only; see NB201API.from_file.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return NB201Table.from_csv(path)
    if suffix == ".pth":
        return NB201API.from_file(path, allow_pickle=allow_pickle)
    raise BenchmarkError(
        f"cannot tell the benchmark format of {path}: expected a .csv table "
        f"({', '.join(CSV_COLUMNS)}) or the official NAS-Bench-201 .pth file"
    )
