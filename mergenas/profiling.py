"""Time and peak memory of one search iteration of the NAS-Bench-201 networks.

MergeNAS claims that one merged convolution per edge makes the supernet cheaper than a DARTS
supernet, close to the cost of a discrete network (Wang et al., MergeNAS, IJCAI 2020). This module
measures that claim on three networks of `mergenas.spaces.nb201_net`:

- `darts`: the DARTS supernet (one module per candidate operation per edge);
- `mergenas`: the MergeNAS supernet (one convolution per edge);
- `discrete`: the network of the cell with `nor_conv_3x3` on every edge (`DISCRETE_CELL`).

One search iteration is what `mergenas.search.Searcher` runs per batch. The alpha step is a forward
and backward pass on a validation batch and an Adam step on the alphas. The weight step is a forward
and backward pass on a training batch, gradient clipping and an SGD step with momentum on the
weights. The discrete network has no
alphas, so its iteration is two weight steps: two forward and backward passes, like the others.
Inputs are random 32x32 images.

Every network runs in its own subprocess (`multiprocessing` with the `spawn` start method), so one
network's memory and allocator state cannot affect another's numbers:

- Peak memory is that of the subprocess's first iteration, right after the build. On CUDA
  it is `torch.cuda.max_memory_allocated()` during that iteration minus `memory_allocated()` before
  it. On the CPU it is measured on the process's resident set size. The baseline is `VmRSS`
  after the model, the optimisers and the inputs are built, and after `gc.collect()` and glibc's
  `malloc_trim(0)`, so that freed heap pages are not counted. Then the high-water mark is reset by
  writing "5" to `/proc/self/clear_refs` (Linux 4.0 or later), and the peak is `VmHWM` after the
  iteration. The difference is what the iteration needs on top of the model: activations, gradients, optimiser
  state, workspaces, plus whatever the allocator keeps instead of returning to the kernel.
- Times come from the same subprocesses, which stay alive. `compare` requests one
  iteration each in turn (round robin, the starting network rotating every round), so load from
  other programs hits all networks alike. The parent process only sends requests and waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

NETWORKS = ("darts", "mergenas", "discrete")

# The discrete network's cell: nor_conv_3x3 on all six edges. No NAS-Bench-201 cell has more
# weights or convolution work, so it is the costliest network a search can return.
DISCRETE_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"

_BYTES_PER_MIB = 2**20
_CLEAR_REFS = Path("/proc/self/clear_refs")
_PROC_STATUS = Path("/proc/self/status")


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """Size, time per search iteration and peak memory of one network."""

    network: str
    parameters: int  # network weights, without the alphas
    batch_size: int
    cells_per_stage: int
    device: str
    channels_last: bool
    times_s: list[float]  # seconds per iteration, one entry per timed repeat, in order
    peak_mib: float  # memory of one iteration on top of the built model, optimisers and inputs
    peak_total_mib: float  # the process's whole peak (CPU: VmHWM) or all allocated CUDA memory
    memory_method: str  # "cuda_max_memory_allocated", "vmhwm_clear_refs" or "ru_maxrss"

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def max_s(self) -> float:
        return max(self.times_s)

    @property
    def spread(self) -> float:
        """(max - min) / median of the times: 0.1 means the repeats span 10 % of the median."""
        return (self.max_s - self.min_s) / self.median_s

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values.update(median_s=self.median_s, min_s=self.min_s, max_s=self.max_s, spread=self.spread)
        return values


@dataclass(frozen=True)
class Target:
    """A claim about one ratio of a `Comparison`: `ratio <= bound` or `ratio >= bound`."""

    ratio: str
    bound: float
    at_least: bool  # True: the ratio must be >= bound; False: <= bound
    description: str

    def check(self, value: float | None) -> bool | None:
        """Return whether `value` meets the target, or None when the ratio was not measured."""
        if value is None:
            return None
        return value >= self.bound if self.at_least else value <= self.bound


TARGETS = (
    Target("darts_over_mergenas_time", 3.0, True, "MergeNAS at least 3x faster than DARTS"),
    Target("mergenas_over_darts_peak", 0.35, False, "MergeNAS peak memory at most 0.35x DARTS's"),
    Target("mergenas_over_discrete_time", 1.3, False, "MergeNAS time within 1.3x the discrete network's"),
)


@dataclass
class Comparison:
    """Measurements of several networks from one interleaved run, and the ratios between them."""

    measurements: dict[str, Measurement] = field(default_factory=dict)

    def _ratio(self, numerator: str, denominator: str, attribute: str) -> float | None:
        if numerator not in self.measurements or denominator not in self.measurements:
            return None
        return getattr(self.measurements[numerator], attribute) / getattr(self.measurements[denominator], attribute)

    def ratios(self) -> dict[str, float | None]:
        """Ratios of median times and of peak memory; None where a network was not measured."""
        return {
            "darts_over_mergenas_time": self._ratio("darts", "mergenas", "median_s"),
            "mergenas_over_darts_peak": self._ratio("mergenas", "darts", "peak_mib"),
            "mergenas_over_discrete_time": self._ratio("mergenas", "discrete", "median_s"),
        }

    def to_dict(self) -> dict:
        ratios = self.ratios()
        return {
            "measurements": {name: m.to_dict() for name, m in self.measurements.items()},
            "ratios": ratios,
            "targets": [
                {**dataclasses.asdict(target), "value": ratios[target.ratio], "met": target.check(ratios[target.ratio])}
                for target in TARGETS
            ],
        }


# -- one search iteration --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    """Everything a subprocess needs to build one network's search iteration."""

    network: str
    batch_size: int
    cells_per_stage: int
    device: str
    channels_last: bool
    seed: int = 0


class _SearchIteration:
    """A network, its optimisers and two random batches: one search iteration per `run()`."""

    def __init__(self, setup: _Setup):
        from mergenas.search import SearchConfig, Searcher
        from mergenas.spaces.nb201_net import NB201Network

        # The search's own steps, borrowed unchanged, so the benchmark times what a search runs.
        self._alpha_step = Searcher._alpha_step.__get__(self)
        self._weight_step = Searcher._weight_step.__get__(self)

        torch.manual_seed(setup.seed)
        device = torch.device(setup.device)
        method = "mergenas" if setup.network == "discrete" else setup.network
        self.config = SearchConfig(method=method, cells_per_stage=setup.cells_per_stage, batch_size=setup.batch_size).resolved()
        cell = DISCRETE_CELL if setup.network == "discrete" else None
        self.model = NB201Network(setup.network, cell=cell, cells_per_stage=setup.cells_per_stage).to(device)
        self.model.train()
        self.weight_optimizer = torch.optim.SGD(
            self.model.weight_parameters(),
            lr=self.config.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )
        self.arch_optimizer = None
        if self.model.arch_parameters():
            self.arch_optimizer = torch.optim.Adam(
                self.model.arch_parameters(),
                lr=self.config.arch_lr,
                betas=self.config.arch_betas,
                weight_decay=self.config.arch_weight_decay,
            )

        shape = (setup.batch_size, 3, 32, 32)
        self.valid_images = torch.randn(shape, device=device)
        self.train_images = torch.randn(shape, device=device)
        self.valid_labels = torch.randint(0, 10, (setup.batch_size,), device=device)
        self.train_labels = torch.randint(0, 10, (setup.batch_size,), device=device)
        if setup.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.valid_images = self.valid_images.contiguous(memory_format=torch.channels_last)
            self.train_images = self.train_images.contiguous(memory_format=torch.channels_last)
        self.device = device

    def run(self) -> None:
        if self.arch_optimizer is not None:
            self._alpha_step(self.valid_images, self.valid_labels)
        else:
            self._weight_step(self.valid_images, self.valid_labels)
        self._weight_step(self.train_images, self.train_labels)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# -- peak memory -----------------------------------------------------------------------------------


def _proc_status_mib(key: str) -> float:
    """Read a `/proc/self/status` size field such as VmRSS or VmHWM (stored in kB) in MiB."""
    for line in _PROC_STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(f"{key} not found in {_PROC_STATUS}")


def _ru_maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _BYTES_PER_MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def _release_free_memory() -> None:
    """Collect garbage and ask glibc to return free heap pages, so they do not count as baseline."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current VmRSS; return False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _measure_peak(iteration: _SearchIteration) -> tuple[float, float, str]:
    """Run the first iteration of a freshly built network; return (peak MiB, total MiB, method)."""
    if iteration.device.type == "cuda":
        torch.cuda.synchronize(iteration.device)
        torch.cuda.reset_peak_memory_stats(iteration.device)
        baseline = torch.cuda.memory_allocated(iteration.device) / _BYTES_PER_MIB
        iteration.run()
        total = torch.cuda.max_memory_allocated(iteration.device) / _BYTES_PER_MIB
        return total - baseline, total, "cuda_max_memory_allocated"

    _release_free_memory()
    if _PROC_STATUS.exists() and _reset_peak_rss():
        baseline = _proc_status_mib("VmRSS")
        _reset_peak_rss()  # again, because reading the baseline may have touched new pages
        iteration.run()
        total = _proc_status_mib("VmHWM")
        return total - baseline, total, "vmhwm_clear_refs"

    # NOTE: without clear_refs the peak is the process's lifetime maximum, so the result is too
    # low if importing and building ever needed more memory than the iteration does on top.
    baseline = _proc_status_mib("VmRSS") if _PROC_STATUS.exists() else _ru_maxrss_mib()
    iteration.run()
    total = _ru_maxrss_mib()
    return total - baseline, total, "ru_maxrss"


# -- the subprocess per network --------------------------------------------------------------------


def _worker(setup: _Setup, connection) -> None:
    """Measure the first iteration's peak memory, then serve timing requests.

    Sends ("ok", (parameters, peak MiB, total MiB, method)) first. Then each request n (an int)
    runs n iterations and sends ("ok", their times in seconds); None stops the worker. A failure
    sends ("error", message) and stops it.
    """
    try:
        iteration = _SearchIteration(setup)
        peak = _measure_peak(iteration)
        connection.send(("ok", (iteration.model.num_weight_parameters(), *peak)))
        while (count := connection.recv()) is not None:
            times = []
            for _ in range(count):
                started = time.perf_counter()
                iteration.run()
                times.append(time.perf_counter() - started)
            connection.send(("ok", times))
    except Exception as error:  # sent to the parent, which raises it with the network's name
        connection.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        connection.close()


class MeasurementError(RuntimeError):
    """A network's subprocess failed; the message names the network and the error."""


def _receive(connection, process, network: str):
    try:
        status, value = connection.recv()
    except EOFError:
        process.join()
        raise MeasurementError(
            f"the subprocess measuring {network!r} exited with code {process.exitcode} before it "
            "answered; if the code is -9 it was probably killed for lack of memory, so try a "
            "smaller --batch-size or --cells-per-stage"
        ) from None
    if status == "error":
        raise MeasurementError(f"measuring {network!r} failed in its subprocess: {value}")
    return value


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """Set environment variables for subprocesses started inside the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value


def _start_worker(context, setup: _Setup, environment: dict[str, str], target=_worker, extra_args=()):
    """Start `target(setup, connection, *extra_args)` in a subprocess; return (connection, process)."""
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(setup, child, *extra_args), daemon=True)
    with _environment(environment):
        process.start()
    child.close()
    return parent, process


# -- public API ------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """Map "auto" to "cuda" when CUDA is available, else "cpu"; check an explicit CUDA request."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda'")
    return device


def compare(
    networks: tuple[str, ...] | list[str] = NETWORKS,
    batch_size: int = 64,
    cells_per_stage: int = 5,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    channels_last: bool = False,
    seed: int = 0,
    omp_wait_policy: str | None = "PASSIVE",
) -> Comparison:
    """Measure `networks` in one run and return their measurements and ratios.

    Every network gets its own subprocess. They are started one at a time, and each builds its
    network and measures the peak memory of its first iteration while the others sleep. All of
    them stay alive and run `warmup` untimed iterations. Then `repeats` rounds follow in which
    every network times one iteration in turn, and the first network of a round rotates.

    `omp_wait_policy` sets OMP_WAIT_POLICY in the subprocesses; None keeps the parent's setting.
    The default PASSIVE makes idle OpenMP threads sleep instead of spinning. On a CPU that other
    programs share, spinning threads wait for descheduled partners at every parallel region. With
    torch 2.14.1 on 2 busy shared cores, spinning made the DARTS iteration of a 5-cell network at
    batch 8 about 15 times slower (8.7 s instead of 0.6 s). It slows the networks with many small
    operators most, which would bias the ratios. Without outside load, PASSIVE cost 5 to 11 %.
    """
    unknown = [name for name in networks if name not in NETWORKS]
    if unknown or not networks:
        raise ValueError(f"unknown networks {unknown}; expected a non-empty selection of {', '.join(NETWORKS)}")
    if len(set(networks)) != len(networks):
        raise ValueError(f"networks must not repeat, got {list(networks)}")
    for name, value, minimum in (("batch_size", batch_size, 1), ("cells_per_stage", cells_per_stage, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    device = resolve_device(device)

    context = multiprocessing.get_context("spawn")
    # libgomp reads OMP_WAIT_POLICY when torch is imported, so it must be set before the start.
    environment = {} if omp_wait_policy is None else {"OMP_WAIT_POLICY": omp_wait_policy}
    setups = {
        name: _Setup(name, batch_size, cells_per_stage, device, channels_last, seed) for name in networks
    }

    workers = {}
    results = {}
    try:
        # One network at a time, so that each first iteration runs alone on the machine.
        for name in networks:
            workers[name] = _start_worker(context, setups[name], environment)
            results[name] = _receive(*workers[name], name)
            parameters, peak, _, method = results[name]
            log.info("%s: %d weight parameters, peak memory %.0f MiB on top of the model (%s)", name, parameters, peak, method)

        for name, (parent, process) in workers.items():
            if warmup:
                parent.send(warmup)
                _receive(parent, process, name)
            log.info("%s: %d warm-up iterations done", name, warmup)

        times: dict[str, list[float]] = {name: [] for name in networks}
        order = list(networks)
        for round_index in range(repeats):
            start = round_index % len(order)
            for name in order[start:] + order[:start]:
                parent, process = workers[name]
                parent.send(1)
                times[name].extend(_receive(parent, process, name))
            log.info(
                "round %d/%d: %s",
                round_index + 1,
                repeats,
                ", ".join(f"{name} {times[name][-1]:.2f} s" for name in networks),
            )
    finally:
        for parent, process in workers.values():
            try:
                parent.send(None)
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()

    comparison = Comparison()
    for name in networks:
        parameters, peak, total, method = results[name]
        comparison.measurements[name] = Measurement(
            network=name,
            parameters=parameters,
            batch_size=batch_size,
            cells_per_stage=cells_per_stage,
            device=device,
            channels_last=channels_last,
            times_s=times[name],
            peak_mib=peak,
            peak_total_mib=total,
            memory_method=method,
        )
    return comparison


def measure_network(
    network: str,
    batch_size: int = 64,
    cells_per_stage: int = 5,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    channels_last: bool = False,
    seed: int = 0,
    omp_wait_policy: str | None = "PASSIVE",
) -> Measurement:
    """Measure one network alone; `compare` measures several with interleaved timing."""
    comparison = compare(
        (network,),
        batch_size=batch_size,
        cells_per_stage=cells_per_stage,
        repeats=repeats,
        warmup=warmup,
        device=device,
        channels_last=channels_last,
        seed=seed,
        omp_wait_policy=omp_wait_policy,
    )
    return comparison.measurements[network]


def _breakdown_worker(setup: _Setup, connection, row_limit: int) -> None:
    """Profile one search iteration after one warm-up; send ("ok", the operator table)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        iteration = _SearchIteration(setup)
        iteration.run()
        on_cuda = iteration.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
        with profile(activities=activities) as profiler:
            iteration.run()
        sort_by = "self_cuda_time_total" if on_cuda else "self_cpu_time_total"
        connection.send(("ok", profiler.key_averages().table(sort_by=sort_by, row_limit=row_limit)))
    except Exception as error:
        connection.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        connection.close()


def op_breakdown(
    network: str,
    batch_size: int = 64,
    cells_per_stage: int = 5,
    device: str = "cpu",
    channels_last: bool = False,
    row_limit: int = 12,
    seed: int = 0,
    omp_wait_policy: str | None = "PASSIVE",
) -> str:
    """Profile one search iteration with torch.profiler and return the operator table.

    Runs in a subprocess set up as `compare` sets its own. The table lists the top `row_limit`
    operators by self time, forward and backward together, of the iteration after a warm-up one.
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; expected one of {', '.join(NETWORKS)}")
    setup = _Setup(network, batch_size, cells_per_stage, resolve_device(device), channels_last, seed)
    environment = {} if omp_wait_policy is None else {"OMP_WAIT_POLICY": omp_wait_policy}
    context = multiprocessing.get_context("spawn")
    connection, process = _start_worker(context, setup, environment, _breakdown_worker, (row_limit,))
    try:
        return _receive(connection, process, network)
    finally:
        process.join()
