"""The error types a user can cause, gathered so the command line reports them in one place."""

from __future__ import annotations

from mergenas.spaces.nb201 import CellError


def _user_errors() -> tuple[type[BaseException], ...]:
    from mergenas.benchmarks import BenchmarkError
    from mergenas.checkpoint import NonFiniteLossError
    from mergenas.data import DataError
    from mergenas.search import SearchError
    from mergenas.spaces.darts import GenotypeError
    from mergenas.train import TrainError

    return (
        CellError,
        GenotypeError,
        BenchmarkError,
        DataError,
        SearchError,
        TrainError,
        NonFiniteLossError,
        FileNotFoundError,
    )


USER_ERRORS = _user_errors()
