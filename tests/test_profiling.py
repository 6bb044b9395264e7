"""Tests of mergenas.profiling on a 5-cell network at batch 8; nothing here asserts a time."""

import json
import math
import multiprocessing

import pytest

from mergenas.profiling import (
    DISCRETE_CELL,
    NETWORKS,
    TARGETS,
    Comparison,
    Measurement,
    MeasurementError,
    Target,
    _receive,
    _Setup,
    _start_worker,
    compare,
)
from mergenas.spaces.nb201_net import NB201Network

TINY = {"batch_size": 8, "cells_per_stage": 1}


@pytest.fixture(scope="module")
def tiny_comparison() -> Comparison:
    return compare(NETWORKS, repeats=1, warmup=0, device="cpu", **TINY)


def test_measurement_structure(tiny_comparison):
    assert list(tiny_comparison.measurements) == list(NETWORKS)
    for name, m in tiny_comparison.measurements.items():
        assert m.network == name
        assert m.batch_size == 8
        assert m.cells_per_stage == 1
        assert m.device == "cpu"
        assert m.channels_last is False
        assert len(m.times_s) == 1
        assert m.min_s > 0
        assert m.min_s <= m.median_s <= m.max_s
        assert m.spread >= 0
        assert m.memory_method in ("vmhwm_clear_refs", "ru_maxrss")
        assert m.peak_mib > 0
        assert m.peak_total_mib > m.peak_mib


def test_parameters_match_models(tiny_comparison):
    for name in NETWORKS:
        cell = DISCRETE_CELL if name == "discrete" else None
        model = NB201Network(name, cell=cell, cells_per_stage=1)
        assert tiny_comparison.measurements[name].parameters == model.num_weight_parameters()


def test_darts_peak_above_mergenas(tiny_comparison):
    # Five fresh runs on 2 shared cores measured 82 to 88 MiB against 49 to 50 MiB.
    darts = tiny_comparison.measurements["darts"].peak_mib
    mergenas = tiny_comparison.measurements["mergenas"].peak_mib
    assert darts > mergenas


def test_ratios_and_json(tiny_comparison):
    ratios = tiny_comparison.ratios()
    assert set(ratios) == {target.ratio for target in TARGETS}
    for value in ratios.values():
        assert value is not None
        assert math.isfinite(value)
        assert value > 0
    record = json.loads(json.dumps(tiny_comparison.to_dict()))
    assert [t["ratio"] for t in record["targets"]] == [t.ratio for t in TARGETS]
    assert record["measurements"]["darts"]["median_s"] == tiny_comparison.measurements["darts"].median_s


def _measurement(network: str, seconds: float, peak: float) -> Measurement:
    return Measurement(network, 1, 8, 1, "cpu", False, [seconds], peak, peak + 100, "vmhwm_clear_refs")


def test_ratios_of_known_values():
    comparison = Comparison({
        "darts": _measurement("darts", 3.0, 300.0),
        "mergenas": _measurement("mergenas", 1.0, 90.0),
        "discrete": _measurement("discrete", 0.8, 80.0),
    })
    ratios = comparison.ratios()
    assert ratios["darts_over_mergenas_time"] == pytest.approx(3.0)
    assert ratios["mergenas_over_darts_peak"] == pytest.approx(0.3)
    assert ratios["mergenas_over_discrete_time"] == pytest.approx(1.25)
    assert [target.check(ratios[target.ratio]) for target in TARGETS] == [True, True, True]


def test_ratios_missing_network_none():
    comparison = Comparison({"mergenas": _measurement("mergenas", 1.0, 90.0)})
    assert all(value is None for value in comparison.ratios().values())
    assert all(target.check(None) is None for target in TARGETS)


def test_target_bounds_inclusive():
    at_least = Target("r", 3.0, True, "")
    at_most = Target("r", 0.35, False, "")
    assert at_least.check(3.0) is True
    assert at_least.check(2.99) is False
    assert at_most.check(0.35) is True
    assert at_most.check(0.36) is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"networks": ("resnet",)},
        {"networks": ()},
        {"networks": ("darts", "darts")},
        {"repeats": 0},
        {"warmup": -1},
        {"batch_size": 0},
        {"device": "tpu"},
    ],
)
def test_compare_rejects_invalid(kwargs):
    with pytest.raises(ValueError):
        compare(**kwargs)


def test_subprocess_error_names_network():
    context = multiprocessing.get_context("spawn")
    connection, process = _start_worker(context, _Setup("resnet", 8, 1, "cpu", False), {})
    with pytest.raises(MeasurementError, match="'resnet'.*unknown"):
        _receive(connection, process, "resnet")
    process.join()
