"""Support for the notebooks in `notebooks/`: parameter checks, notebook presets, a run cache,
the numerical checks of the propositions, and atomic saving of figures and tables.

The notebooks only call these functions, so that each code cell stays a few lines long and every
notebook can run top to bottom under papermill, nbval or JupyterLab alike.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mergenas import atomic
from mergenas import ops as kernels
from mergenas.presets import PRESET_NAMES, preset_settings
from mergenas.search import SearchConfig, read_log, resume, search

log = logging.getLogger(__name__)

__all__ = [
    "ParameterError",
    "RunCacheError",
    "check_parameters",
    "SEARCH_PRESETS",
    "search_config",
    "describe_preset",
    "run_dir",
    "cached_search",
    "Run",
    "max_relative_error",
    "proposition_cases",
    "verify_case",
    "verify_propositions",
    "avg_pool_border_ratio",
    "save_figure",
    "save_table",
    "markdown_table",
]


# -- parameters -------------------------------------------------------------------------------


class ParameterError(TypeError):
    """A notebook parameter with the wrong type or an unknown value."""


def _type_name(expected) -> str:
    """Return a readable name for a type annotation such as `int | None` or `list[int]`."""
    if expected is type(None):
        return "None"
    if isinstance(expected, type) and not typing.get_args(expected):
        return expected.__name__
    return str(expected).replace("typing.", "")


def _matches(value, expected) -> bool:
    """Check `value` against a type annotation: a class, `X | Y`, `list[X]` or `tuple[X, ...]`."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        # An int is a valid float parameter (weight decay 1 is legal), a bool is not.
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item_type = typing.get_args(expected)[0] if typing.get_args(expected) else object
        return all(_matches(item, item_type) for item in value)
    return isinstance(value, expected)


def check_parameters(namespace: typing.Mapping[str, object], spec: dict[str, object]) -> dict:
    """Check the notebook parameters named in `spec` and return them as a dict.

    `namespace` is the notebook's `globals()`, and `spec` maps each parameter name to its type
    annotation (`str`, `int | None`, `list[int]`, ...). A parameter named `preset` must also be
    one of ci, cpu and paper. Raises ParameterError naming the parameter, the expected type and
    the value it got, so that a bad papermill `-p` fails in the first cell after the parameters.
    """
    values = {}
    for name, expected in spec.items():
        if name not in namespace:
            raise ParameterError(
                f"parameter {name!r} is not defined; add it to the cell tagged 'parameters' "
                f"with a value of type {_type_name(expected)}"
            )
        value = namespace[name]
        if not _matches(value, expected):
            raise ParameterError(
                f"parameter {name!r} must be of type {_type_name(expected)}, "
                f"got {value!r} of type {type(value).__name__}"
            )
        values[name] = value

    preset = values.get("preset")
    if "preset" in spec and preset not in PRESET_NAMES:
        raise ParameterError(
            f"parameter 'preset' must be one of {', '.join(PRESET_NAMES)}, got {preset!r}"
        )
    return values


# -- notebook presets -------------------------------------------------------------------------

# SearchConfig settings of the NAS-Bench-201 searches of notebooks 4-6, per notebook preset.
# Notebooks 4, 5 and 6 share these settings so that the runs of one are cached for the others.
# Settings left out come from `mergenas.presets.PRESETS["nb201"]`.
#
# NOTE: the `ci` and `cpu` sizes are set by the notebooks' time budgets, not by the method. At
# `ci` all notebooks run in a few minutes. At `cpu` the twelve searches of Table 2 took about 14
# minutes on 2 CPU cores shared with other jobs (docs/notebooks.md). Both are far too short to
# show which cell the method converges to.
SEARCH_PRESETS: dict[str, dict[str, object]] = {
    "ci": {"cells_per_stage": 1, "channels": 8, "batch_size": 16, "train_limit": 64, "epochs": 2},
    "cpu": {"cells_per_stage": 1, "batch_size": 32, "train_limit": 1280, "epochs": 6},
    "paper": {},
}

# Torch CPU threads per notebook preset (None keeps torch's default). One thread makes the `ci`
# searches give the same floats, and so the same derived cells, on machines with different core
# counts. For `cpu`, one thread ran 1.5 to 2.2 times faster per step than two when other
# processes kept both cores busy (see docs/notebooks.md).
NOTEBOOK_THREADS: dict[str, int | None] = {"ci": 1, "cpu": 1, "paper": None}


def set_threads(preset: str) -> int:
    """Apply the preset's torch thread count (NOTEBOOK_THREADS) and return the count in use."""
    _check_preset(preset)
    threads = NOTEBOOK_THREADS[preset]
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# The NAS-Bench-201 search of the MergeNAS paper (Wang et al., IJCAI 2020).
_PAPER_SEARCH = {
    "channels": 16,
    "epochs": 50,
    "batch_size": 64,
    "train_limit": None,
    "cells_per_stage": 5,
}
_SETTING_LABELS = {
    "channels": "channels of the first stage",
    "epochs": "epochs",
    "batch_size": "batch size",
    "train_limit": "training images (split into two search halves)",
    "cells_per_stage": "cells per stage",
}


def _check_preset(preset: str) -> None:
    if preset not in SEARCH_PRESETS:
        raise ParameterError(
            f"unknown preset {preset!r}; expected one of {', '.join(SEARCH_PRESETS)}"
        )


def search_config(
    preset: str,
    method: str,
    weight_decay: float,
    seed: int,
    data_root: str | None = None,
    epochs: int | None = None,
) -> SearchConfig:
    """Build the resolved SearchConfig of one notebook search.

    The notebook preset's overrides (SEARCH_PRESETS) win over the library preset, and `epochs`,
    when given, wins over both.
    """
    _check_preset(preset)
    overrides = dict(SEARCH_PRESETS[preset])
    if epochs is not None:
        overrides["epochs"] = epochs
    config = SearchConfig(
        space="nb201",
        method=method,
        preset=preset,
        seed=seed,
        weight_decay=weight_decay,
        data_root=data_root,
        device="cpu",
        **overrides,
    )
    return config.resolved()


def _format_count(value) -> str:
    if value is None:
        return "all 50,000"
    return f"{value:,}"


def describe_preset(preset: str, epochs: int | None = None) -> str:
    """Return a few lines that list the notebook preset's search settings beside _PAPER_SEARCH."""
    _check_preset(preset)
    settings = {"channels": SearchConfig.channels, **preset_settings(preset, "nb201")}
    settings.update(SEARCH_PRESETS[preset])
    if epochs is not None:
        settings["epochs"] = epochs

    lines = [f"preset {preset!r}: NAS-Bench-201 search settings"]
    for key, label in _SETTING_LABELS.items():
        ours, paper = settings[key], _PAPER_SEARCH[key]
        if key == "train_limit":
            ours, paper = _format_count(ours), _format_count(paper)
        mark = "" if ours == paper else "   (differs from the paper)"
        lines.append(f"  {label}: {ours}, paper {paper}{mark}")
    cells = 3 * int(settings["cells_per_stage"]) + 2
    lines.append(f"  supernet: {cells} cells (the paper: 17)")
    lines.append("  architecture step: first order (the paper's Table 2: second order, V2)")
    return "\n".join(lines)


# -- run cache --------------------------------------------------------------------------------


class RunCacheError(RuntimeError):
    """A cached run that does not match the search a notebook requests."""


# Settings that must agree between a cached run and the requested search. Device and data root
# may differ, because they do not change what the search computes.
_CACHE_KEYS = (
    "space", "method", "preset", "epochs", "seed", "batch_size", "train_limit",
    "cells_per_stage", "channels", "order", "weight_decay", "lr", "lr_min", "momentum",
    "grad_clip", "arch_lr", "arch_weight_decay", "merge_parameter_free",
)


@dataclass
class Run:
    """One search of the run cache: its folder, result, per-epoch log and how it was obtained."""

    path: Path
    result: dict
    records: list[dict]
    status: str  # "loaded" (from the cache), "resumed" or "searched"
    config: SearchConfig

    @property
    def label(self) -> str:
        return f"{self.config.method} wd {self.config.weight_decay:g} seed {self.config.seed}"


def run_dir(runs_dir: str | os.PathLike, preset: str, method: str, weight_decay: float, seed: int) -> Path:
    """Return `<runs_dir>/<preset>/<method>-wd<weight decay>-seed<seed>`."""
    return Path(runs_dir) / preset / f"{method}-wd{weight_decay:g}-seed{seed}"


def _check_cached_config(path: Path, config: SearchConfig) -> None:
    stored = json.loads((path / "config.json").read_text())
    wanted = config.to_dict()
    differences = [
        f"{key}: cached {stored.get(key)!r}, requested {wanted[key]!r}"
        for key in _CACHE_KEYS
        if stored.get(key) != wanted[key]
    ]
    if differences:
        raise RunCacheError(
            f"the cached run in {path} was made with other settings ({'; '.join(differences)}). "
            "Delete that folder to search again, or pass another runs_dir."
        )


def cached_search(
    config: SearchConfig, runs_dir: str | os.PathLike, progress: bool = True
) -> Run:
    """Return the search `config` from the run cache, searching or resuming only when needed.

    A folder with result.json is loaded, one with config.json but no result.json is resumed from
    its last checkpoint, and an absent folder gets a new search. Raises RunCacheError when a
    cached run has other settings than `config`.
    """
    path = run_dir(runs_dir, config.preset, config.method, config.weight_decay, config.seed)
    if (path / "config.json").exists():
        _check_cached_config(path, config)
        if (path / "result.json").exists():
            result = json.loads((path / "result.json").read_text())
            status = "loaded"
        else:
            log.info("resuming the unfinished run in %s", path)
            result = resume(path, progress=progress)
            status = "resumed"
    else:
        log.info("searching into %s", path)
        result = search(config, path, progress=progress)
        status = "searched"
    return Run(path=path, result=result, records=read_log(path), status=status, config=config)


# -- propositions -----------------------------------------------------------------------------


def max_relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """Return max |result - reference| / max |reference|, the error relative to the output scale."""
    scale = reference.abs().max().item()
    return (result - reference).abs().max().item() / (scale if scale > 0 else 1.0)


def proposition_cases() -> list[dict]:
    """Return the grid of cases that notebook 1 checks, one dict of settings per case."""
    cases = []
    for channels in (1, 3, 8):
        for stride in (1, 2):
            for k in (1, 3, 5):
                for border in (1, 2, 3):
                    cases.append({"check": "Prop. 1 zero padding", "k": k, "n": border,
                                  "stride": stride, "channels": channels})
            for k in (3, 5):
                for rate in (2, 3, 4):
                    cases.append({"check": "Prop. 2 dilation", "k": k, "rate": rate,
                                  "stride": stride, "channels": channels})
            for k in (1, 3, 5, 7):
                cases.append({"check": "Prop. 3 separable", "k": k, "stride": stride,
                              "channels": channels})
            for size in (1, 3, 5, 9):
                cases.append({"check": "Sec. 3.4 skip-connect", "size": size, "stride": stride,
                              "channels": channels})
            for size in (3, 5, 9):
                cases.append({"check": "Sec. 3.4 average pooling", "k": 3, "size": size,
                              "stride": stride, "channels": channels})
    return cases


def _random_input(channels: int, generator: torch.Generator, side: int = 15) -> torch.Tensor:
    # (batch 2, channels, side, side); an odd side exercises the last stride-2 window.
    return torch.randn(2, channels, side, side, dtype=torch.float64, generator=generator)


def verify_case(case: dict, seed: int = 0) -> float:
    """Compute one case both with PyTorch's own operation and with the library's kernel.

    Returns the max relative error (float64) between the two outputs. The reference side is
    always the PyTorch operation the proposition is about (a smaller kernel, a dilated
    convolution, a depth-wise plus point-wise pair, identity slicing or `avg_pool2d`).
    """
    generator = torch.Generator().manual_seed(seed)
    channels, stride = case["channels"], case["stride"]
    x = _random_input(channels, generator)
    c_out = channels + 1
    check = case["check"]

    if check.startswith("Prop. 1"):
        k, border = case["k"], case["n"]
        weight = torch.randn(c_out, channels, k, k, dtype=torch.float64, generator=generator)
        reference = F.conv2d(x, weight, stride=stride, padding=k // 2)
        padded = kernels.pad_kernel(weight, k + 2 * border)
        result = F.conv2d(x, padded, stride=stride, padding=k // 2 + border)
    elif check.startswith("Prop. 2"):
        k, rate = case["k"], case["rate"]
        weight = torch.randn(c_out, channels, k, k, dtype=torch.float64, generator=generator)
        padding = rate * (k - 1) // 2
        reference = F.conv2d(x, weight, stride=stride, padding=padding, dilation=rate)
        result = F.conv2d(x, kernels.dilate_kernel(weight, rate), stride=stride, padding=padding)
    elif check.startswith("Prop. 3"):
        k = case["k"]
        depthwise = torch.randn(channels, 1, k, k, dtype=torch.float64, generator=generator)
        pointwise = torch.randn(c_out, channels, 1, 1, dtype=torch.float64, generator=generator)
        hidden = F.conv2d(x, depthwise, stride=stride, padding=k // 2, groups=channels)
        reference = F.conv2d(hidden, pointwise)
        dense = kernels.separable_to_dense(depthwise, pointwise)
        result = F.conv2d(x, dense, stride=stride, padding=k // 2)
    elif check == "Sec. 3.4 skip-connect":
        size = case["size"]
        reference = x[:, :, ::stride, ::stride]
        identity = kernels.identity_kernel(channels, size, dtype=torch.float64)
        result = F.conv2d(x, identity, stride=stride, padding=size // 2)
    elif check == "Sec. 3.4 average pooling":
        k, size = case["k"], case["size"]
        # A fixed kernel counts padded zeros, so it matches count_include_pad=True everywhere.
        reference = F.avg_pool2d(x, k, stride=stride, padding=k // 2, count_include_pad=True)
        pool = kernels.avg_pool_kernel(channels, k, size, dtype=torch.float64)
        result = F.conv2d(x, pool, stride=stride, padding=size // 2)
    else:
        raise ValueError(f"unknown check {check!r} in case {case}")

    if result.shape != reference.shape:
        raise AssertionError(
            f"case {case}: output shapes differ, {tuple(result.shape)} vs {tuple(reference.shape)}"
        )
    return max_relative_error(result, reference)


def _case_setting(case: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in case.items() if key != "check")


def verify_propositions(cases: list[dict] | None = None) -> list[dict]:
    """Verify every case and return rows of (check, setting, max relative error)."""
    cases = proposition_cases() if cases is None else cases
    return [
        {"check": case["check"], "setting": _case_setting(case), "max_rel_error": verify_case(case)}
        for case in cases
    ]


def summarise_propositions(rows: list[dict], tolerance: float = 1e-10) -> list[dict]:
    """Group the rows by check: number of cases, largest error and whether all are below tolerance."""
    summary: dict[str, dict] = {}
    for row in rows:
        entry = summary.setdefault(row["check"], {"check": row["check"], "cases": 0, "largest": 0.0})
        entry["cases"] += 1
        entry["largest"] = max(entry["largest"], row["max_rel_error"])
    for entry in summary.values():
        entry["below_tolerance"] = entry["largest"] < tolerance
        # A coarse bound keeps the printed text stable across BLAS builds and CPUs.
        entry["bound"] = "< 1e-13" if entry["largest"] < 1e-13 else f"{entry['largest']:.1e}"
    return list(summary.values())


def avg_pool_border_ratio(side: int = 8, k: int = 3) -> torch.Tensor:
    """Return (fixed-kernel pooling) / (NAS-Bench-201 pooling) on a side x side input of ones.

    The fixed kernel counts padded zeros (count_include_pad=True), the benchmark's pooling does
    not, so the ratio is (in-image taps) / (k * k): 1 inside, 6/9 on edges and 4/9 at corners
    for k = 3. On any input the two differ by exactly this factor.
    """
    ones = torch.ones(1, 1, side, side, dtype=torch.float64)
    fixed = F.conv2d(ones, kernels.avg_pool_kernel(1, k, dtype=torch.float64), padding=k // 2)
    benchmark = F.avg_pool2d(ones, k, stride=1, padding=k // 2, count_include_pad=False)
    return (fixed / benchmark)[0, 0]


# -- figures and tables -----------------------------------------------------------------------


def save_figure(figure, name: str, figures_dir: str | os.PathLike = "../figures", dpi: int = 120) -> Path:
    """Write `figure` as `<figures_dir>/<name>.png` atomically and return the path.

    The PNG is rendered into a temporary file in the same folder and renamed over the target, so
    a failed run leaves the previous figure intact.
    """
    path = Path(figures_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight", format="png")
        os.chmod(temporary, 0o644)  # mkstemp creates the file readable by its owner only
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _format_cell(value, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list], digits: int = 2) -> str:
    """Return a Markdown table; floats get `digits` decimals and None an empty cell."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(value, digits) for value in row) + " |")
    return "\n".join(lines) + "\n"


def save_table(
    name: str,
    headers: list[str],
    rows: list[list],
    figures_dir: str | os.PathLike = "../figures",
    digits: int = 2,
) -> str:
    """Write a table as `<name>.md` and `<name>.csv` in `figures_dir` atomically; return the Markdown.

    The CSV keeps full precision, the Markdown rounds floats to `digits` decimals.
    """
    text = markdown_table(headers, rows, digits)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([["" if value is None else value for value in row] for row in rows])
    atomic.write_text(Path(figures_dir) / f"{name}.md", text)
    atomic.write_text(Path(figures_dir) / f"{name}.csv", buffer.getvalue())
    return text


# -- Table 2 and Figure 3 ---------------------------------------------------------------------

# Table 2 of Wang et al. (MergeNAS, IJCAI 2020): CIFAR-10 test accuracy (%) of three seeds and
# their mean, then CIFAR-100 and ImageNet16-120 (valid, test). Their searches use the
# second-order DARTS step ("V2").
PAPER_TABLE2: dict[tuple[str, float], dict[str, object]] = {
    ("darts", 1e-2): {"trials": (80.57, 93.31, 88.21), "avg": 87.36,
                      "cifar100": (59.90, 59.80), "imagenet16_120": (36.06, 35.58)},
    ("darts", 2e-2): {"trials": (87.50, 87.50, 85.21), "avg": 86.74,
                      "cifar100": (57.67, 57.38), "imagenet16_120": (31.09, 30.78)},
    ("mergenas", 1e-2): {"trials": (90.65, 90.65, 94.36), "avg": 91.89,
                         "cifar100": (69.28, 69.44), "imagenet16_120": (42.38, 41.87)},
    ("mergenas", 2e-2): {"trials": (94.36, 94.36, 94.36), "avg": 94.36,
                         "cifar100": (73.49, 73.51), "imagenet16_120": (46.37, 46.34)},
}
# The optimal cell's row of the paper's Table 2: CIFAR-10 test, CIFAR-100 and ImageNet16-120
# (valid, test).
PAPER_OPTIMUM = {"cifar10": 94.37, "cifar100": (73.49, 73.51), "imagenet16_120": (46.77, 47.31)}

_METHOD_NAMES = {"darts": "DARTS", "mergenas": "MergeNAS"}


def run_grid(
    preset: str,
    methods: list[str],
    weight_decays: list[float],
    seeds: list[int],
    runs_dir: str | os.PathLike,
    data_root: str | None = None,
    epochs: int | None = None,
    progress: bool = True,
) -> dict[tuple[str, float, int], Run]:
    """Fetch every (method, weight decay, seed) search from the run cache, searching the missing.

    Prints one line per run with how it was obtained and its search time.
    """
    runs = {}
    for method in methods:
        for weight_decay in weight_decays:
            for seed in seeds:
                config = search_config(preset, method, weight_decay, seed, data_root, epochs)
                run = cached_search(config, runs_dir, progress=progress)
                print(f"{run.label}: {run.status}, {run.result['elapsed_s']:.0f} s of search", flush=True)
                runs[(method, weight_decay, seed)] = run
    return runs


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _require_accuracy(run: Run) -> dict:
    if run.result.get("nb201") is None:
        raise RunCacheError(
            f"the run in {run.path} has no NAS-Bench-201 accuracies because the benchmark table "
            "was missing when it ran. Set MERGENAS_DATA (or data_root) and delete the folder to search again."
        )
    return run.result["nb201"]


def table2(runs: dict[tuple[str, float, int], Run], benchmark, seeds: list[int]) -> tuple[list[str], list[list]]:
    """Lay out Table 2: one row of ours and one of the paper per (method, weight decay).

    Columns: method, source, CIFAR-10 test of each seed, their mean, and the mean CIFAR-100 and
    ImageNet16-120 test accuracies. A last pair of rows gives the benchmark's optimum per data set.
    Paper values beyond three trials are left empty.
    """
    headers = ["method", "source"] + [f"trial {i + 1}" for i in range(len(seeds))]
    headers += ["C10 avg", "C100 test", "IN16 test"]
    keys = sorted({(method, decay) for method, decay, _ in runs}, key=lambda key: (key[0], key[1]))

    rows = []
    for method, decay in keys:
        name = f"{_METHOD_NAMES.get(method, method)} (wd {decay:g})"
        accuracies = [_require_accuracy(runs[(method, decay, seed)]) for seed in seeds]
        cifar10 = [accuracy["cifar10"] for accuracy in accuracies]
        rows.append([name, "ours", *cifar10, _mean(cifar10),
                     _mean([a["cifar100"] for a in accuracies]),
                     _mean([a["imagenet16_120"] for a in accuracies])])
        paper = PAPER_TABLE2.get((method, decay))
        if paper is not None:
            trials = list(paper["trials"])[: len(seeds)] + [None] * max(0, len(seeds) - 3)
            rows.append([name, "paper", *trials, paper["avg"], paper["cifar100"][1],
                         paper["imagenet16_120"][1]])

    best = {dataset: benchmark.best(dataset)[2] for dataset in ("cifar10", "cifar100", "imagenet16_120")}
    blanks = [None] * len(seeds)
    rows.append(["optimal cell", "benchmark", *blanks, best["cifar10"].cifar10,
                 best["cifar100"].cifar100, best["imagenet16_120"].imagenet16_120])
    rows.append(["optimal cell", "paper", *blanks, PAPER_OPTIMUM["cifar10"],
                 PAPER_OPTIMUM["cifar100"][1], PAPER_OPTIMUM["imagenet16_120"][1]])
    return headers, rows


def table2_averages(runs: dict[tuple[str, float, int], Run], seeds: list[int]) -> tuple[list[str], list[float], list[float]]:
    """Return labels, our mean CIFAR-10 test accuracy and the paper's, per (method, weight decay)."""
    keys = sorted({(method, decay) for method, decay, _ in runs if (method, decay) in PAPER_TABLE2})
    labels, ours, paper = [], [], []
    for method, decay in keys:
        labels.append(f"{_METHOD_NAMES.get(method, method)}\nwd {decay:g}")
        ours.append(_mean([_require_accuracy(runs[(method, decay, seed)])["cifar10"] for seed in seeds]))
        paper.append(float(PAPER_TABLE2[(method, decay)]["avg"]))
    return labels, ours, paper


def stability_curves(
    runs: dict[tuple[str, float, int], Run], dataset: str = "cifar10"
) -> dict[tuple[str, float], list[list[float]]]:
    """Return (method, weight decay) -> one list per seed of the per-epoch benchmark accuracy.

    Entry t of a list is the `dataset` test accuracy of the cell derived after epoch t + 1, read
    from the run's log.
    """
    curves: dict[tuple[str, float], list[list[float]]] = {}
    for (method, decay, _seed), run in sorted(runs.items()):
        if any(record.get("nb201") is None for record in run.records):
            raise RunCacheError(
                f"the log in {run.path} has epochs without NAS-Bench-201 accuracies because the "
                "benchmark table was missing when it ran. Set MERGENAS_DATA (or data_root) and "
                "delete the folder to search again."
            )
        curves.setdefault((method, decay), []).append(
            [record["nb201"][dataset] for record in run.records]
        )
    return curves


def stability_table(curves: dict[tuple[str, float], list[list[float]]]) -> tuple[list[str], list[list]]:
    """Return a table: one row per (method, weight decay), the seed mean per epoch as columns."""
    epochs = max(len(runs[0]) for runs in curves.values())
    headers = ["method", "seeds"] + [f"epoch {t + 1}" for t in range(epochs)]
    rows = []
    for (method, decay), runs in sorted(curves.items()):
        means = [_mean([run[t] for run in runs if len(run) > t]) for t in range(epochs)]
        rows.append([f"{_METHOD_NAMES.get(method, method)} (wd {decay:g})", len(runs), *means])
    return headers, rows


# -- notebook 3: cost of a search iteration ---------------------------------------------------

# Settings of `mergenas.profiling.compare` per notebook preset. `cpu` and `paper` measure the
# benchmark's 17-cell network at batch 64, the size the paper searches with; `ci` only checks
# that the measurement runs.
PROFILE_PRESETS: dict[str, dict[str, object]] = {
    "ci": {"batch_size": 8, "cells_per_stage": 1, "repeats": 2, "warmup": 1, "device": "cpu"},
    "cpu": {"batch_size": 64, "cells_per_stage": 5, "repeats": 3, "warmup": 1, "device": "cpu"},
    "paper": {"batch_size": 64, "cells_per_stage": 5, "repeats": 20, "warmup": 3, "device": "auto"},
}


def profile_settings(preset: str) -> dict[str, object]:
    """Return a copy of the preset's `mergenas.profiling.compare` settings."""
    _check_preset(preset)
    return dict(PROFILE_PRESETS[preset])


def parameter_counts(cells_per_stage: int = 5, channels: int = 16) -> dict[str, int]:
    """Return the weight count (alphas excluded) of the DARTS, MergeNAS and discrete networks.

    The discrete network carries `mergenas.profiling.DISCRETE_CELL` (nor_conv_3x3 on every edge).
    """
    from mergenas.profiling import DISCRETE_CELL
    from mergenas.spaces.nb201_net import NB201Network

    counts = {}
    for mode in ("darts", "mergenas", "discrete"):
        cell = DISCRETE_CELL if mode == "discrete" else None
        network = NB201Network(mode, cell=cell, channels=channels, cells_per_stage=cells_per_stage)
        counts[mode] = network.num_weight_parameters()
    return counts


def profile_table(comparison) -> tuple[list[str], list[list]]:
    """Lay out a `mergenas.profiling.Comparison`: one row per network, then the ratios."""
    headers = ["network", "parameters", "median s / iteration", "min s", "max s", "peak MiB (iteration)"]
    rows = []
    for name, measurement in comparison.measurements.items():
        rows.append([name, measurement.parameters, measurement.median_s, measurement.min_s,
                     measurement.max_s, measurement.peak_mib])
    return headers, rows


# -- notebooks 7 and 8: the DARTS space -------------------------------------------------------

# SearchConfig overrides of the DARTS-space searches of notebooks 7 and 8, per notebook preset.
# Settings left out come from `mergenas.presets.PRESETS["darts"]`. There `ci` is 1 epoch on 32
# images with 3 cells, `cpu` 5 cells and `paper` 50 epochs on all 50,000 images with 8 cells.
#
# NOTE: the `cpu` sizes are set by the time budget of notebooks 7 and 8 (both in under 15 minutes
# on 2 shared CPU cores), not by the method: 16 steps per search on 5 cells. On one torch thread,
# with other jobs on the cores, 20 such steps took 137 s for DARTS and 94 s for MergeNAS (first
# order, batch 16). Such searches show that the pipeline works, not which cell the method finds.
DARTS_SEARCH_PRESETS: dict[str, dict[str, object]] = {
    "ci": {},
    "cpu": {"epochs": 2, "batch_size": 16, "train_limit": 256},
    "paper": {},
}
# Overrides of the 20-cell search of Table 3, applied on top of DARTS_SEARCH_PRESETS. At `ci` it
# keeps the minimum of one batch per search half.
DEEP_SEARCH_PRESETS: dict[str, dict[str, object]] = {
    "ci": {"train_limit": 16},
    "cpu": {"epochs": 1, "train_limit": 64},
    "paper": {},
}

# TrainConfig overrides of the trainings of notebook 8, per notebook preset. Settings left out
# come from `mergenas.train.TRAIN_PRESETS`. `ci` trains 2 epochs of 4 steps so that the learning
# curve has two points.
# `cpu` trains 5 cells at C=16 for 3 epochs of 10 steps and tests on 1,000 images, so that the
# six trainings of notebook 8 fit its time budget. An 8-cell network took 1.4 s per step of 32
# images on one torch thread with other jobs on the cores.
DARTS_TRAIN_PRESETS: dict[str, dict[str, object]] = {
    "ci": {"epochs": 2, "train_limit": 32, "test_limit": 64},
    "cpu": {"epochs": 3, "cells": 5, "train_limit": 320, "test_limit": 1000},
    "paper": {},
}

# The DARTS-space search and evaluation of Wang et al. (MergeNAS, IJCAI 2020).
_PAPER_DARTS_SEARCH = {"cells": 8, "channels": 16, "epochs": 50, "batch_size": 64, "train_limit": None}
_PAPER_DARTS_TRAINING = {"cells": 20, "channels": 36, "epochs": 600, "batch_size": 96,
                         "train_limit": None, "test_limit": None}
_DARTS_LABELS = {
    "cells": "cells",
    "channels": "channels of the first cell",
    "epochs": "epochs",
    "batch_size": "batch size",
    "train_limit": "training images",
    "test_limit": "test images",
}


def darts_search_config(
    preset: str,
    method: str,
    order: int = 1,
    cells: int | None = None,
    seed: int = 0,
    data_root: str | None = None,
) -> SearchConfig:
    """Build the resolved SearchConfig of one DARTS-space notebook search.

    `cells` set to 20 selects the deep search of Table 3 and its DEEP_SEARCH_PRESETS overrides;
    None keeps the preset's supernet depth. The `paper` preset runs on a GPU when there is one.
    """
    _check_preset(preset)
    overrides = dict(DARTS_SEARCH_PRESETS[preset])
    if cells is not None:
        overrides["cells"] = cells
        if cells >= 20:
            overrides.update(DEEP_SEARCH_PRESETS[preset])
    config = SearchConfig(
        space="darts",
        method=method,
        preset=preset,
        order=order,
        seed=seed,
        data_root=data_root,
        device="auto" if preset == "paper" else "cpu",
        **overrides,
    )
    return config.resolved()


def darts_train_config(preset: str, genotype: str, seed: int = 0, data_root: str | None = None):
    """Build the resolved TrainConfig of one notebook training; `genotype` is a name or JSON file."""
    from mergenas.train import TrainConfig

    _check_preset(preset)
    config = TrainConfig(
        genotype=genotype,
        preset=preset,
        seed=seed,
        data_root=data_root,
        device="auto" if preset == "paper" else "cpu",
        **DARTS_TRAIN_PRESETS[preset],
    )
    return config.resolved()


def _describe_settings(title: str, ours: dict, paper: dict) -> list[str]:
    lines = [title]
    for key, value in paper.items():
        mine = ours[key]
        shown_mine, shown_paper = mine, value
        if key.endswith("_limit"):
            total = "10,000" if key == "test_limit" else "50,000"
            shown_mine = f"all {total}" if mine is None else f"{mine:,}"
            shown_paper = f"all {total}" if value is None else f"{value:,}"
        mark = "" if mine == value else "   (differs from the paper)"
        lines.append(f"  {_DARTS_LABELS[key]}: {shown_mine}, paper {shown_paper}{mark}")
    return lines


def describe_darts_preset(preset: str, training: bool = False) -> str:
    """Return a few lines that list the DARTS-space search (and training) settings beside the paper's."""
    search_config = darts_search_config(preset, "mergenas")
    lines = _describe_settings(f"preset {preset!r}: DARTS-space search settings",
                               search_config.to_dict(), _PAPER_DARTS_SEARCH)
    lines.append("  architecture step: first order (the paper reports first and second order)")
    if training:
        train_config = darts_train_config(preset, "MERGENAS_PAPER")
        lines += _describe_settings(f"preset {preset!r}: training from scratch",
                                    _config_dict(train_config), _PAPER_DARTS_TRAINING)
    return "\n".join(lines)


def _config_dict(config) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


# Settings that must agree between a cached DARTS-space search and the requested one.
_DARTS_CACHE_KEYS = tuple(key for key in _CACHE_KEYS if key != "cells_per_stage") + ("cells", "arch_betas")


def darts_run_dir(runs_dir: str | os.PathLike, config: SearchConfig) -> Path:
    """Return `<runs_dir>/<preset>/darts-space/<method>-order<order>-cells<cells>-seed<seed>`."""
    name = f"{config.method}-order{config.order}-cells{config.cells}-seed{config.seed}"
    return Path(runs_dir) / config.preset / "darts-space" / name


def _cache_differences(stored: dict, wanted: dict, keys) -> list[str]:
    # JSON turns tuples into lists, so compare list forms.
    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    return [
        f"{key}: cached {stored.get(key)!r}, requested {wanted[key]!r}"
        for key in keys
        if plain(stored.get(key)) != plain(wanted[key])
    ]


def _raise_if_differs(path: Path, differences: list[str]) -> None:
    if differences:
        raise RunCacheError(
            f"the cached run in {path} was made with other settings ({'; '.join(differences)}). "
            "Delete that folder to run again, or pass another runs_dir."
        )


@dataclass
class DartsRun(Run):
    """One DARTS-space search of the run cache."""

    @property
    def label(self) -> str:
        name = _METHOD_NAMES.get(self.config.method, self.config.method)
        return f"{name} order {self.config.order}, {self.config.cells} cells"


def cached_darts_search(config: SearchConfig, runs_dir: str | os.PathLike, progress: bool = True) -> DartsRun:
    """Return the DARTS-space search `config` from the run cache, searching or resuming only when needed.

    Works like `cached_search`, in the folder `darts_run_dir(runs_dir, config)`.
    """
    path = darts_run_dir(runs_dir, config)
    if (path / "config.json").exists():
        stored = json.loads((path / "config.json").read_text())
        _raise_if_differs(path, _cache_differences(stored, config.to_dict(), _DARTS_CACHE_KEYS))
        if (path / "result.json").exists():
            result = json.loads((path / "result.json").read_text())
            status = "loaded"
        else:
            log.info("resuming the unfinished search in %s", path)
            result = resume(path, progress=progress)
            status = "resumed"
    else:
        log.info("searching into %s", path)
        result = search(config, path, progress=progress)
        status = "searched"
    return DartsRun(path=path, result=result, records=read_log(path), status=status, config=config)


# Settings that must agree between a cached training and the requested one. The genotype is
# compared by value, so the file it was read from does not matter.
_TRAIN_CACHE_KEYS = (
    "preset", "epochs", "batch_size", "train_limit", "test_limit", "cells", "channels", "seed",
    "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "auxiliary_weight", "cutout", "drop_path",
)


@dataclass
class Training:
    """One training from scratch of the run cache: its folder, result, per-epoch log and status."""

    name: str
    path: Path
    result: dict
    records: list[dict]
    status: str  # "loaded" (from the cache), "resumed" or "trained"


def training_run_dir(runs_dir: str | os.PathLike, preset: str, name: str, seed: int) -> Path:
    """Return `<runs_dir>/<preset>/train/<name>-seed<seed>`."""
    return Path(runs_dir) / preset / "train" / f"{name}-seed{seed}"


def cached_training(name: str, config, runs_dir: str | os.PathLike, progress: bool = True) -> Training:
    """Return the training `config` (a TrainConfig) from the run cache, training only when needed.

    A folder with result.json is loaded, one with config.json only is resumed, and a missing one
    is trained. Raises RunCacheError when the cached run has other settings or another genotype.
    """
    from mergenas import train as training
    from mergenas.spaces.darts import load_genotype

    path = training_run_dir(runs_dir, config.preset, name, config.seed)
    if (path / "config.json").exists():
        stored = json.loads((path / "config.json").read_text())
        wanted = {**_config_dict(config), "genotype_value": load_genotype(config.genotype).to_dict()}
        _raise_if_differs(path, _cache_differences(stored, wanted, _TRAIN_CACHE_KEYS + ("genotype_value",)))
        if (path / "result.json").exists():
            result = json.loads((path / "result.json").read_text())
            status = "loaded"
        else:
            log.info("resuming the unfinished training in %s", path)
            result = training.resume(path, progress=progress)
            status = "resumed"
    else:
        log.info("training into %s", path)
        result = training.train(config, path, progress=progress)
        status = "trained"
    records = training._read_log(path / training.LOG_NAME)
    return Training(name=name, path=path, result=result, records=records, status=status)


def merged_separable_error(stride: int = 1, channels: int = 4, seed: int = 0) -> float:
    """Compare a MergeNAS edge's one separable convolution with the four it replaces, in float64.

    The reference runs sep_conv_3x3, sep_conv_5x5, dil_conv_3x3 and dil_conv_5x5 as their own
    depth-wise convolutions, with the kernels cut out of the shared 9x9 kernel W_d, and sums
    their softmax-weighted outputs before the shared point-wise kernel W_p. The library side is
    `MergedEdge.merged_separable`, the convolution with M~ * W_d. Returns the max relative error.
    """
    from mergenas.spaces.darts import OPS, SEPARABLE_OPS
    from mergenas.spaces.darts_net import MergedEdge

    generator = torch.Generator().manual_seed(seed)
    edge = MergedEdge(channels, stride).double()
    with torch.no_grad():
        edge.depthwise.copy_(torch.randn(edge.depthwise.shape, dtype=torch.float64, generator=generator))
        edge.pointwise.copy_(torch.randn(edge.pointwise.shape, dtype=torch.float64, generator=generator))
    weights = torch.softmax(torch.randn(len(OPS), dtype=torch.float64, generator=generator), dim=0)
    x = _random_input(channels, generator)

    # (kernel size, dilation rate, slice of the 9x9 kernel) of each separable op
    taps = {
        "sep_conv_3x3": (3, 1, slice(3, 6)),
        "sep_conv_5x5": (5, 1, slice(2, 7)),
        "dil_conv_3x3": (3, 2, slice(2, 7, 2)),
        "dil_conv_5x5": (5, 2, slice(0, 9, 2)),
    }
    hidden = 0
    for name in SEPARABLE_OPS:
        size, rate, window = taps[name]
        kernel = edge.depthwise.detach()[:, :, window, window]  # (C, 1, size, size)
        padding = rate * (size - 1) // 2
        out = F.conv2d(F.relu(x), kernel, stride=stride, padding=padding, dilation=rate, groups=channels)
        hidden = hidden + weights[OPS.index(name)] * out
    reference = F.conv2d(hidden, edge.pointwise.detach())
    with torch.no_grad():
        result = edge.merged_separable(x, weights)
    return max_relative_error(result, reference)


def separable_edge_parameters(channels: int) -> dict[str, int]:
    """Return the weights of the separable ops of one edge: per DARTS op, their sum, and MergeNAS's.

    A single separable op has k*k*C depth-wise and C*C point-wise weights; the merged edge has
    one 9x9 depth-wise kernel and one point-wise kernel.
    """
    counts = {
        "sep_conv_3x3": 9 * channels + channels * channels,
        "sep_conv_5x5": 25 * channels + channels * channels,
        "dil_conv_3x3": 9 * channels + channels * channels,
        "dil_conv_5x5": 25 * channels + channels * channels,
    }
    counts["DARTS edge (sum)"] = sum(counts.values())
    counts["MergeNAS edge"] = 81 * channels + channels * channels
    return counts


def supernet_parameters(cells_list: list[int], channels: int = 16) -> tuple[list[str], list[list]]:
    """Return a table of the DARTS and MergeNAS supernets' weights (alphas excluded) per depth."""
    from mergenas.spaces.darts_net import DartsSupernet

    headers = ["cells", "DARTS supernet", "MergeNAS supernet", "MergeNAS / DARTS"]
    rows = []
    for cells in cells_list:
        darts = DartsSupernet("darts", channels=channels, cells=cells).num_weight_parameters()
        merged = DartsSupernet("mergenas", channels=channels, cells=cells).num_weight_parameters()
        rows.append([cells, darts, merged, merged / darts])
    return headers, rows


# Batch size of the memory measurement of notebook 7, per notebook preset. Saved-tensor bytes
# grow linearly with the batch, so a small batch shows the same ratio between the modes.
MEMORY_BATCH: dict[str, int] = {"ci": 2, "cpu": 16, "paper": 64}


def search_memory_table(preset: str, cells_list: list[int]) -> tuple[list[str], list[list]]:
    """Measure both supernet modes with `measure_search_memory` at each depth; return a table.

    The memory is the bytes autograd saves for one backward pass (and, on a GPU, the peak
    allocation), in MiB, at the batch size MEMORY_BATCH[preset].
    """
    from mergenas.spaces.darts_net import measure_search_memory

    _check_preset(preset)
    device = "cuda" if preset == "paper" and torch.cuda.is_available() else "cpu"
    headers = ["cells", "batch", "method", "saved MiB", "GPU peak MiB"]
    rows = []
    for cells in cells_list:
        for method in ("darts", "mergenas"):
            measured = measure_search_memory(method, cells, batch_size=MEMORY_BATCH[preset], device=device)
            peak = measured.get("cuda_peak_bytes")
            rows.append([cells, MEMORY_BATCH[preset], _METHOD_NAMES[method], measured["saved_bytes"] / 2**20,
                         None if peak is None else peak / 2**20])
    return headers, rows


def evaluation_parameters(genotypes: dict[str, object], channels: int = 36, cells: int = 20) -> dict[str, float]:
    """Return the parameters in millions of each genotype's evaluation network (auxiliary head excluded)."""
    from mergenas.spaces.darts_net import DartsNetwork

    return {name: DartsNetwork(genotype, channels=channels, cells=cells).num_parameters() / 1e6
            for name, genotype in genotypes.items()}


def multiply_adds(genotype, channels: int = 36, cells: int = 20, image_size: int = 32) -> int:
    """Count the multiply-adds of one forward pass of a genotype's evaluation network on one image.

    Counts every convolution and linear layer (the auxiliary head excluded, as in eval mode).
    """
    from torch import nn

    from mergenas.spaces.darts_net import DartsNetwork

    model = DartsNetwork(genotype, channels=channels, cells=cells).eval()
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * per_output
        else:
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    for handle in handles:
        handle.remove()
    return total


# -- Tables 1 and 3 ---------------------------------------------------------------------------

# Table 1 of Wang et al. (MergeNAS, IJCAI 2020), CIFAR-10: test error (%), parameters (M) of the
# 20-cell C=36 network, and search cost (GPU-days on a GTX 1080 Ti), keyed by (method, order).
# The DARTS rows are quoted there from DARTS; only the range 3.3-3.4 M is given for both.
PAPER_TABLE1: dict[tuple[str, int], dict[str, object]] = {
    ("darts", 1): {"error": "3.00 ± 0.14", "parameters_m": "3.3-3.4", "gpu_days": 0.4},
    ("darts", 2): {"error": "2.76 ± 0.09", "parameters_m": "3.3-3.4", "gpu_days": 1.0},
    ("mergenas", 1): {"error": "2.73 ± 0.02", "parameters_m": "2.9", "gpu_days": 0.2},
    ("mergenas", 2): {"error": "2.68 ± 0.01", "parameters_m": "2.9", "gpu_days": 0.6},
}
# Table 3 of the same paper (depth transfer): CIFAR-10 test accuracy (%) and parameters (M) of
# the 20-cell evaluation network, keyed by (supernet cells, order).
PAPER_TABLE3: dict[tuple[int, int], dict[str, float]] = {
    (8, 1): {"accuracy": 97.27, "parameters_m": 2.87},
    (8, 2): {"accuracy": 97.33, "parameters_m": 2.92},
    (20, 1): {"accuracy": 97.44, "parameters_m": 2.96},
}

# (row label, training name in notebook 8, key of PAPER_TABLE1 or None)
TABLE1_ROWS = (
    ("DARTS, 1st order", "darts-order1", ("darts", 1)),
    ("DARTS, 2nd order (the DARTS_V2 cell)", "darts-v2", ("darts", 2)),
    ("MergeNAS, 1st order", "mergenas-order1", ("mergenas", 1)),
    ("MergeNAS, 2nd order", "mergenas-order2", ("mergenas", 2)),
    ("MergeNAS, Figure 2 cell (reconstructed)", "mergenas-paper", None),
)
# (row label, training name, search order, key of PAPER_TABLE3)
TABLE3_ROWS = (
    ("shallow supernet, 1st order", "mergenas-order1", (8, 1)),
    ("shallow supernet, 2nd order", "mergenas-order2", (8, 2)),
    ("20-cell supernet, 1st order", "mergenas-order1-cells20", (20, 1)),
)


def table1(trainings: dict[str, "Training"], evaluation_m: dict[str, float]) -> tuple[list[str], list[list]]:
    """Lay out Table 1: per method a row of ours (trained here) and a row of the paper.

    `trainings` and `evaluation_m` (parameters in millions of the 20-cell C=36 network) are keyed
    by the training names of TABLE1_ROWS; rows whose training is missing are left out.
    """
    headers = ["method", "source", "test error (%)", "params (M), as trained",
               "params (M), 20 cells C=36", "search (GPU-days)"]
    rows = []
    for label, name, key in TABLE1_ROWS:
        if name not in trainings:
            continue
        result = trainings[name].result
        rows.append([label, "ours", result["test_error"], result["parameters_m"], evaluation_m[name], None])
        if key is not None:
            paper = PAPER_TABLE1[key]
            rows.append([label, "paper", paper["error"], None, paper["parameters_m"], paper["gpu_days"]])
    return headers, rows


def table3(trainings: dict[str, "Training"], evaluation_m: dict[str, float],
           search_cells: dict[str, int]) -> tuple[list[str], list[list]]:
    """Lay out Table 3: per search depth and order a row of ours and a row of the paper.

    `search_cells` maps a training name to the depth of the supernet its genotype came from.
    """
    headers = ["search", "source", "supernet cells", "test accuracy (%)", "params (M), as trained",
               "params (M), 20 cells C=36"]
    rows = []
    for label, name, key in TABLE3_ROWS:
        if name not in trainings:
            continue
        result = trainings[name].result
        rows.append([label, "ours", search_cells[name], result["test_accuracy"], result["parameters_m"],
                     evaluation_m[name]])
        paper = PAPER_TABLE3[key]
        rows.append([label, "paper", key[0], paper["accuracy"], None, paper["parameters_m"]])
    return headers, rows
