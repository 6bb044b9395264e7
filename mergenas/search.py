"""The bi-level architecture search of DARTS, shared by the DARTS and the MergeNAS supernets.

Each iteration takes one alpha step on a search-validation batch (Adam) and then one weight
step on a search-training batch (SGD with momentum, cosine learning rate, gradient clipping).
By default the alpha step is the first-order DARTS approximation (Liu et al., "DARTS:
Differentiable Architecture Search", ICLR 2019); `order=2` takes the unrolled step instead.

Run directory
    `config.json` contains the settings, `log.jsonl` one JSON record per finished epoch,
    `checkpoint.pt` the state after the last finished epoch (or after the step at which SIGINT or
    SIGTERM arrived), and `result.json` the derived architecture once the last epoch is done.
    Every file is replaced atomically, so a kill at any moment leaves the old or the new version.

Checkpoint and resume
    A checkpoint contains the weights, the alphas, both optimisers, the learning-rate schedule, the
    Python, NumPy and torch generator states, the epoch and step reached with the partial sums of
    that epoch, and the log records so far. The batches need no stored state: `BatchStream`
    derives the order and the augmentation of step t of epoch e from (seed, e, t). `resume`
    therefore continues a run exactly, and on the CPU a resumed run ends with alphas and weights
    bit-identical to a run that was never interrupted (see tests/test_resume.py).

Determinism
    On the CPU, the same settings and seed give identical logs, alphas and cells, apart from the
    timing field `elapsed_s`, in the same environment: torch version, CPU type and number of
    torch threads (1 and 2 threads give different weights after one epoch). On a GPU, cuDNN and
    atomic-add kernels vary between runs unless `deterministic=True`; see docs/determinism.md.

Test-only hooks
    The environment variable MERGENAS_TEST_KILL_AT_STEP=N makes the run send itself a signal
    right after its N-th optimisation step (counted from 1 over the whole run, across
    resumptions). MERGENAS_TEST_KILL_AFTER_CHECKPOINT=N does the same right after the
    epoch-end checkpoint of epoch N is written, before its log line is appended.
    MERGENAS_TEST_KILL_SIGNAL picks the signal (KILL, the default, INT or TERM). The tests use
    them to interrupt a run at exact moments; never set them otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mergenas import atomic
from mergenas.device import resolve_device as _resolve_device
from mergenas.checkpoint import (  # noqa: F401 (NonFiniteLossError is re-exported)
    CHECKPOINT_NAME,
    InterruptGuard,
    NonFiniteLossError,
    RunInterrupted,
    capture_rng_state,
    check_finite_loss,
    stop_position,
    interrupt_guard,
    restore_rng_state,
    setting_differences,
)
from mergenas.data import BatchStream, load_cifar10, split_search_halves, to_tensor_images
from mergenas.presets import preset_settings
from mergenas.spaces import get_space

log = logging.getLogger(__name__)

METHODS = ("darts", "mergenas")
SPACES = ("nb201", "darts")
ORDERS = (1, 2)

CONFIG_NAME = "config.json"
LOG_NAME = "log.jsonl"
RESULT_NAME = "result.json"

# Settings that `resume` may change. A longer or shorter run only changes the cosine schedule of
# the epochs still to come, and `data_root` is only where the data lies: the checkpoint stores a
# SHA-256 digest of the training images, so data that differs is rejected. Any other setting
# would make the stored state meaningless.
SAFE_TO_CHANGE_ON_RESUME = frozenset({"epochs", "data_root"})

# Version of the checkpoint layout written by `Searcher.state_dict`.
CHECKPOINT_FORMAT = 1

TEST_KILL_AT_STEP_ENV = "MERGENAS_TEST_KILL_AT_STEP"
TEST_KILL_AFTER_CHECKPOINT_ENV = "MERGENAS_TEST_KILL_AFTER_CHECKPOINT"
TEST_KILL_SIGNAL_ENV = "MERGENAS_TEST_KILL_SIGNAL"


class SearchError(RuntimeError):
    """A search that cannot start or cannot continue. The message gives the reason and the fix."""


@dataclass
class SearchConfig:
    """Every setting of a search; stored as `config.json` in the run directory."""

    space: str = "nb201"
    method: str = "mergenas"
    preset: str = "cpu"
    epochs: int | None = None
    seed: int = 0
    batch_size: int | None = None
    train_limit: int | None = None
    cells_per_stage: int | None = None  # NAS-Bench-201 space: cells per stage (5 in the benchmark)
    cells: int | None = None  # DARTS space: cells of the supernet (8 in the paper)
    channels: int = 16
    order: int = 1  # 1: first-order DARTS step; 2: the unrolled second-order step
    weight_decay: float = 3e-4
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    grad_clip: float = 5.0
    arch_lr: float | None = None
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    merge_parameter_free: bool = True
    device: str = "auto"
    deterministic: bool = False  # torch.use_deterministic_algorithms during the run (matters on GPUs)
    data_root: str | None = None

    def resolved(self) -> "SearchConfig":
        """Return a copy with every unset (None) setting filled from the preset, validated."""
        try:
            settings = preset_settings(self.preset, self.space)
        except ValueError as error:
            raise SearchError(f"{error}; pass --preset with one of the listed names") from error
        values = dataclasses.asdict(self)
        for key, value in settings.items():
            if values.get(key) is None:
                values[key] = value
        values["arch_betas"] = tuple(values["arch_betas"])
        config = SearchConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise SearchError naming the first invalid setting."""
        if self.space not in SPACES:
            raise SearchError(f"unknown search space {self.space!r}; expected one of {', '.join(SPACES)}")
        if self.method not in METHODS:
            raise SearchError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.order not in ORDERS:
            raise SearchError(f"order must be 1 or 2, got {self.order!r}")
        depth = "cells_per_stage" if self.space == "nb201" else "cells"
        other_depth = "cells" if self.space == "nb201" else "cells_per_stage"
        if getattr(self, other_depth) is not None:
            raise SearchError(
                f"{other_depth} applies to the other search space and would be ignored in "
                f"space {self.space!r}; set {depth} instead"
            )
        if self.space == "darts" and not self.merge_parameter_free:
            raise SearchError(
                "separate parameter-free ops are the only choice in the darts space (skip and "
                "pooling cannot merge into a separable convolution); drop --separate-parameter-free"
            )
        for name in ("epochs", "batch_size", depth, "channels"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.train_limit is not None:
            _check_int("train_limit", self.train_limit, minimum=2 * self.batch_size,
                       why=" (one batch per search half)")
        for name in ("lr", "arch_lr", "grad_clip"):
            _check_number(name, getattr(self, name), positive=True)
        for name in ("lr_min", "weight_decay", "arch_weight_decay", "momentum"):
            _check_number(name, getattr(self, name), positive=False)
        if not isinstance(self.device, str) or (
            self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:")
        ):
            raise SearchError(f"unknown device {self.device!r}; expected auto, cpu or cuda")
        for name in ("merge_parameter_free", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise SearchError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SearchConfig":
        """Build a config from `to_dict` output; settings it lacks keep their defaults."""
        if not isinstance(values, dict):
            raise SearchError(f"search settings must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SearchError(f"unknown search settings {unknown}; known: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("arch_betas"), list):
            values["arch_betas"] = tuple(values["arch_betas"])
        return cls(**values)


def _check_int(name: str, value, minimum: int, why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SearchError(f"{name} must be an integer of at least {minimum}{why}, got {value!r}")


def _check_number(name: str, value, positive: bool) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "at least 0"
        raise SearchError(f"{name} must be a finite number {bound}, got {value!r}")


def resolve_device(name: str) -> torch.device:
    return _resolve_device(name, SearchError)


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Make torch pick deterministic kernels inside the block when `enabled`, then restore.

    This sets `torch.use_deterministic_algorithms(True)`, turns cuDNN autotuning off and sets
    CUBLAS_WORKSPACE_CONFIG=:4096:8 unless it is already set. cuBLAS reads that variable only
    when CUDA starts, so on a GPU it takes effect only when this block is the process's first
    CUDA use. Operations without a deterministic kernel then raise RuntimeError.
    """
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
        torch.backends.cudnn.deterministic = previous[2]


def _try_load_table(data_root):
    """Return the NAS-Bench-201 table, or None (with a warning) when it is not there."""
    from mergenas.benchmarks import load_table
    from mergenas.data import MissingDataError

    try:
        return load_table(data_root)
    except MissingDataError as error:
        log.warning("NAS-Bench-201 accuracies will be null: %s", error)
        return None


@dataclass
class _Running:
    """Sums for per-epoch averages of loss and accuracy."""

    loss: float = 0.0
    correct: int = 0
    count: int = 0
    batches: int = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss.item()
        self.correct += (logits.argmax(1) == labels).sum().item()
        self.count += labels.numel()
        self.batches += 1

    def summary(self) -> tuple[float, float]:
        return self.loss / max(self.batches, 1), 100.0 * self.correct / max(self.count, 1)


def second_order_alpha_step(model, x_train, y_train, x_valid, y_valid, weight_optimizer, arch_optimizer):
    """Take the unrolled (second-order) architecture step of DARTS; see `mergenas.second_order`."""
    from mergenas.second_order import second_order_alpha_step as step

    return step(model, x_train, y_train, x_valid, y_valid, weight_optimizer, arch_optimizer)


class _TestKillHook:
    """The test-only self-kill points set by MERGENAS_TEST_KILL_* (see the module docstring)."""

    def __init__(self) -> None:
        self.at_step = _env_int(TEST_KILL_AT_STEP_ENV)
        self.after_checkpoint = _env_int(TEST_KILL_AFTER_CHECKPOINT_ENV)
        name = os.environ.get(TEST_KILL_SIGNAL_ENV, "KILL").upper().removeprefix("SIG")
        if name not in ("KILL", "INT", "TERM"):
            raise SearchError(f"{TEST_KILL_SIGNAL_ENV}={name!r} is invalid; expected KILL, INT or TERM")
        self.signal_number = getattr(signal, f"SIG{name}")

    def step_done(self, global_step: int) -> None:
        if global_step == self.at_step:
            os.kill(os.getpid(), self.signal_number)

    def checkpoint_done(self, epoch: int) -> None:
        if epoch == self.after_checkpoint:
            os.kill(os.getpid(), self.signal_number)


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise SearchError(f"{name}={text!r} is invalid; expected an integer") from None


class Searcher:
    """One search run in one run directory: build, train epoch by epoch, checkpoint, finish."""

    def __init__(self, config: SearchConfig, run_dir: str | Path, progress: bool = True):
        self.config = config.resolved()
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.device = resolve_device(self.config.device)

        self.space = get_space(self.config.space)
        random.seed(self.config.seed)
        np.random.seed(self.config.seed)
        torch.manual_seed(self.config.seed)
        self.model = self.space.build_supernet(self.config).to(self.device)
        self.weight_optimizer = torch.optim.SGD(
            self.model.weight_parameters(),
            lr=self.config.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )
        self.arch_optimizer = torch.optim.Adam(
            self.model.arch_parameters(),
            lr=self.config.arch_lr,
            betas=self.config.arch_betas,
            weight_decay=self.config.arch_weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.weight_optimizer, T_max=self.config.epochs, eta_min=self.config.lr_min
        )
        self.epoch = 0  # epochs completed
        self.step = 0  # steps completed in epoch `self.epoch`; non-zero only after a mid-epoch stop
        self.train_sums, self.valid_sums = _Running(), _Running()  # of the steps done in this epoch
        self.elapsed = 0.0  # seconds spent training, over all resumptions
        self.records: list[dict] = []  # the log records of the completed epochs
        self._load_data()
        self.table = _try_load_table(self.config.data_root) if self.config.space == "nb201" else None

    def _load_data(self) -> None:
        cifar = load_cifar10(self.config.data_root)
        images, labels = cifar.x_train, cifar.y_train
        if self.config.train_limit is not None:
            if self.config.train_limit > len(images):
                raise SearchError(
                    f"train_limit {self.config.train_limit} exceeds the {len(images)} training "
                    f"images of {cifar.source}; pass a smaller --train-limit"
                )
            images, labels = images[: self.config.train_limit], labels[: self.config.train_limit]
        if len(images) < 2 * self.config.batch_size:
            raise SearchError(
                f"{cifar.source} has {len(images)} training images, fewer than two batches of "
                f"{self.config.batch_size} (one per search half); pass a smaller --batch-size"
            )
        self.data_digest = _digest(images, labels)
        train_idx, valid_idx = split_search_halves(len(images), self.config.seed)
        tensors = to_tensor_images(images, self.device)
        targets = torch.tensor(labels, dtype=torch.long, device=self.device)
        self.train_stream = BatchStream(
            tensors[train_idx], targets[train_idx], self.config.batch_size, seed=2 * self.config.seed
        )
        self.valid_stream = BatchStream(
            tensors[valid_idx], targets[valid_idx], self.config.batch_size, seed=2 * self.config.seed + 1
        )
        self.steps_per_epoch = min(self.train_stream.steps_per_epoch, self.valid_stream.steps_per_epoch)

    # -- one epoch ---------------------------------------------------------------------------

    def _alpha_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.arch_optimizer.zero_grad(set_to_none=True)
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        self.arch_optimizer.step()
        return loss.detach(), logits.detach()

    def _weight_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.weight_optimizer.zero_grad(set_to_none=True)
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.weight_parameters(), self.config.grad_clip)
        self.weight_optimizer.step()
        return loss.detach(), logits.detach()

    def _train_step(self, batch_train, batch_valid) -> None:
        """Take one alpha step and one weight step and add their losses to the epoch sums."""
        (x_train, y_train), (x_valid, y_valid) = batch_train, batch_valid
        if self.config.order == 2:
            loss_v, logits_v = second_order_alpha_step(
                self.model, x_train, y_train, x_valid, y_valid,
                self.weight_optimizer, self.arch_optimizer,
            )
        else:
            loss_v, logits_v = self._alpha_step(x_valid, y_valid)
        check_finite_loss(loss_v, "architecture", self.epoch, self.step)
        loss_t, logits_t = self._weight_step(x_train, y_train)
        check_finite_loss(loss_t, "weight", self.epoch, self.step)
        self.valid_sums.add(loss_v, logits_v, y_valid)
        self.train_sums.add(loss_t, logits_t, y_train)

    def run_epoch(self, guard: InterruptGuard | None = None, kill_hook: _TestKillHook | None = None) -> dict | None:
        """Train the rest of epoch `self.epoch` and return its log record.

        When `guard` reports SIGINT or SIGTERM before the last step, this saves a mid-epoch
        checkpoint and returns None.
        """
        started = time.perf_counter()
        self.model.train()
        batches = zip(
            self.train_stream.epoch(self.epoch, start_step=self.step),
            self.valid_stream.epoch(self.epoch, start_step=self.step),
        )
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step,
            desc=f"{self.config.method} epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not self.progress,
            mininterval=2.0,
            ascii=True,
            leave=False,
        )
        for batch_train, batch_valid in batches:
            if self.step >= self.steps_per_epoch:
                break
            self._train_step(batch_train, batch_valid)
            self.step += 1
            bar.update(1)
            if kill_hook is not None:
                kill_hook.step_done(self.epoch * self.steps_per_epoch + self.step)
            if guard is not None and guard.requested and self.step < self.steps_per_epoch:
                bar.close()
                self.elapsed += time.perf_counter() - started
                self.save_checkpoint()
                return None
        bar.close()
        return self._finish_epoch(started)

    def _finish_epoch(self, started: float) -> dict:
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.elapsed += time.perf_counter() - started
        train_loss, train_acc = self.train_sums.summary()
        valid_loss, valid_acc = self.valid_sums.summary()
        self.epoch += 1
        self.step = 0
        self.train_sums, self.valid_sums = _Running(), _Running()
        record = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "valid_loss": valid_loss,
            "valid_acc": valid_acc,
            "lr": lr,
            "alphas": self.model.edge_weights().detach().cpu().tolist(),
            **self.space.describe_architecture(self.model, self.table),
            "elapsed_s": round(self.elapsed, 3),
        }
        self.records.append(record)
        return record

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "train_sums": dataclasses.asdict(self.train_sums),
            "valid_sums": dataclasses.asdict(self.valid_sums),
            "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
            # The batch order needs no generator state: it is a function of these numbers.
            "data_order": self._data_order(),
            "log": list(self.records),
            "num_threads": torch.get_num_threads(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`; raise SearchError when it belongs to other settings or data."""
        missing = [key for key in self.state_dict() if key not in state]
        if missing:
            raise SearchError(
                f"{self.run_dir / CHECKPOINT_NAME} is not a search checkpoint: it lacks the keys "
                f"{', '.join(missing)}; start a new run with --out, or --overwrite to replace this one"
            )
        if state["format"] != CHECKPOINT_FORMAT:
            raise SearchError(
                f"{self.run_dir / CHECKPOINT_NAME} has checkpoint format {state['format']!r}, but this "
                f"version reads format {CHECKPOINT_FORMAT}; resume it with the version that wrote it, "
                f"or start again with --overwrite"
            )

        differences = setting_differences(state["config"], self.config.to_dict(), SAFE_TO_CHANGE_ON_RESUME)
        if differences:
            raise SearchError(
                f"{CONFIG_NAME} in {self.run_dir} does not match its checkpoint: "
                + "; ".join(differences)
                + f". Restore {CONFIG_NAME}, or start again with --overwrite"
            )

        order = self._data_order()
        if state["data_order"] != order:
            raise SearchError(
                f"the checkpoint in {self.run_dir} was taken on other training data or batches "
                f"(stored {state['data_order']}, now {order}); pass --data-root with the "
                f"CIFAR-10 copy the run started with"
            )

        if state["num_threads"] != torch.get_num_threads():
            # Reductions split across threads add in another order, so the run goes on correctly
            # but not bit-identically to an uninterrupted one.
            log.warning(
                "the checkpoint in %s was written with %d torch threads, this process uses %d; "
                "set OMP_NUM_THREADS=%d for a bit-identical continuation",
                self.run_dir, state["num_threads"], torch.get_num_threads(), state["num_threads"],
            )

        self.model.load_state_dict(state["model"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.train_sums = _Running(**state["train_sums"])
        self.valid_sums = _Running(**state["valid_sums"])
        self.elapsed = state["elapsed"]
        self.records = list(state["log"])

    def _data_order(self) -> dict:
        return {
            "train_seed": self.train_stream.seed,
            "valid_seed": self.valid_stream.seed,
            "steps_per_epoch": self.steps_per_epoch,
            "images_sha256": self.data_digest,
        }

    def save_checkpoint(self) -> Path:
        path = self.run_dir / CHECKPOINT_NAME
        atomic.save_torch(path, self.state_dict())
        return path

    # -- the whole run ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.epochs and self.step == 0

    def run(self) -> dict:
        """Train the remaining epochs, checkpointing after each, and write result.json.

        Raises RunInterrupted after saving a checkpoint when SIGINT or SIGTERM arrives, and
        NonFiniteLossError, leaving the last checkpoint as it was, when a loss is NaN or infinite.
        """
        log_path = self.run_dir / LOG_NAME
        kill_hook = _TestKillHook()
        outer = tqdm(
            total=self.config.epochs,
            initial=self.epoch,
            desc=f"{self.config.method} search",
            disable=not self.progress,
            ascii=True,
        )
        with interrupt_guard() as guard, deterministic_algorithms(self.config.deterministic):
            # The checkpoint's records replace a log that a kill left a line short or with half a line.
            atomic.write_text(log_path, "".join(json.dumps(record) + "\n" for record in self.records))
            while not self.finished:
                record = self.run_epoch(guard, kill_hook)
                if record is None:
                    outer.close()
                    guard.raise_if_requested(self._stopped_where())
                self.save_checkpoint()
                kill_hook.checkpoint_done(self.epoch)
                atomic.append_line(log_path, json.dumps(record))
                outer.update(1)
                outer.set_postfix_str(f"valid acc {record['valid_acc']:.1f}%")
                log.info("epoch %d: valid acc %.2f%%, cell %s", record["epoch"], record["valid_acc"], record["cell"])
                if guard.requested and not self.finished:
                    outer.close()
                    guard.raise_if_requested(self._stopped_where())
        outer.close()
        return self._write_result()

    def _stopped_where(self) -> str:
        return (
            f"{stop_position(self.epoch, self.step)}; the checkpoint in {self.run_dir} is saved, "
            f"continue with: mergenas search --resume {self.run_dir}"
        )

    def _write_result(self) -> dict:
        result = {
            **self.space.describe_architecture(self.model, self.table),
            "alphas": self.model.edge_weights().detach().cpu().tolist(),
            "method": self.config.method,
            "space": self.config.space,
            "seed": self.config.seed,
            "epochs": self.epoch,
            "parameters": self.model.num_weight_parameters(),
            "elapsed_s": round(self.elapsed, 3),
        }
        atomic.write_json(self.run_dir / RESULT_NAME, result)
        return result


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    """Return the SHA-256 of the images and labels a search trains on (about 1 s for all 50,000)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images).data)
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return digest.hexdigest()


def _read_log(path: Path) -> list[dict]:
    # A line cut by a kill mid-write ends the list; on resume the checkpoint's records replace the file.
    return atomic.read_json_lines(path)


def read_log(run_dir: str | Path) -> list[dict]:
    """Read the per-epoch records of a run directory."""
    return _read_log(Path(run_dir) / LOG_NAME)


def search(
    config: SearchConfig,
    run_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run a new search in `run_dir` and return its result.

    A `run_dir` that already contains a run (a config.json) is rejected unless `overwrite`. With
    `overwrite`, the old run's files stay untouched until the new run has validated its settings
    and loaded its data and model, so a failing start (a bad data root, say) loses nothing.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SearchError(f"{run_dir} is a file, not a run directory; choose another --out")
    if (run_dir / CONFIG_NAME).exists() and not overwrite:
        state = "a finished run" if (run_dir / RESULT_NAME).exists() else "an unfinished run"
        raise SearchError(
            f"{run_dir} already contains {state}; pass --resume {run_dir} to continue it, "
            "--overwrite to start again there, or choose another --out"
        )
    searcher = Searcher(config, run_dir, progress=progress)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SearchError(f"cannot create the run directory {run_dir}: {error}; choose another --out") from error
    for stale in (RESULT_NAME, CHECKPOINT_NAME, LOG_NAME):
        (run_dir / stale).unlink(missing_ok=True)
    atomic.write_json(run_dir / CONFIG_NAME, searcher.config.to_dict())
    return searcher.run()


def stored_config(run_dir: str | Path) -> SearchConfig:
    """Read the settings of the run in `run_dir` from its config.json."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise SearchError(
            f"{run_dir} contains no run to resume ({CONFIG_NAME} not found); start one with --out {run_dir}"
        )
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SearchError(f"{path} is not valid JSON ({error}); restore it, or start again with --overwrite") from error
    return SearchConfig.from_dict(values)


def resume_differences(stored: SearchConfig, requested: dict) -> list[str]:
    """Describe each requested setting that differs from the stored one and may not change."""
    requested = dict(requested)
    if "arch_betas" in requested:
        requested["arch_betas"] = tuple(requested["arch_betas"])
    return setting_differences(stored.to_dict(), requested, SAFE_TO_CHANGE_ON_RESUME)


def resume(
    run_dir: str | Path,
    progress: bool = True,
    epochs: int | None = None,
    settings: dict | None = None,
) -> dict:
    """Continue the run in `run_dir` from its last checkpoint, with its stored settings.

    `epochs` may raise or lower the number of epochs (not below those already done). `settings`
    are the values the caller requests explicitly. Any that differs from the stored one raises
    SearchError listing the differences, because only `epochs` is safe to change. `data_root`
    may differ too, because it only names where the same data lies. A run that is already
    finished returns its stored result and touches no file.
    """
    run_dir = Path(run_dir)
    config = stored_config(run_dir)
    requested = dict(settings or {})
    if epochs is not None:
        requested["epochs"] = epochs
    unknown = sorted(set(requested) - set(config.to_dict()))
    if unknown:
        raise SearchError(f"unknown search settings {unknown}")
    differences = resume_differences(config, requested)
    if differences:
        raise SearchError(
            f"the requested settings differ from those stored in {run_dir}: "
            + "; ".join(differences)
            + ". Only --epochs may change when resuming; drop the other options, or start a new "
            "run with --out"
        )
    new_epochs = requested.get("epochs", config.epochs)
    moved_data = "data_root" in requested and requested["data_root"] != config.data_root
    if moved_data:
        config.data_root = requested["data_root"]

    searcher = Searcher(config, run_dir, progress=progress)
    checkpoint = _load_checkpoint_file(run_dir, searcher.device)
    if checkpoint is not None:
        searcher.load_state_dict(checkpoint)
    if new_epochs != searcher.config.epochs:
        _check_int("epochs", new_epochs, minimum=max(searcher.epoch + (searcher.step > 0), 1),
                   why=f" (the epochs already done in {run_dir})")
        searcher.config.epochs = new_epochs
    # The cosine schedule stretches or shrinks to the run's length from the current epoch on.
    # The stored schedule has the old length when an earlier resume changed `epochs` in
    # config.json but stopped before its first checkpoint.
    searcher.scheduler.T_max = searcher.config.epochs

    result_path = run_dir / RESULT_NAME
    if searcher.finished and result_path.is_file():
        log.info("%s is already finished after %d epochs; nothing to do", run_dir, searcher.epoch)
        return json.loads(result_path.read_text())
    if new_epochs != config.epochs or moved_data:
        atomic.write_json(run_dir / CONFIG_NAME, searcher.config.to_dict())
    # A result.json of a run that goes on would describe an earlier state.
    result_path.unlink(missing_ok=True)
    return searcher.run()


def _load_checkpoint_file(run_dir: Path, device: torch.device) -> dict | None:
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # torch.load raises many types for a damaged file
        raise SearchError(
            f"cannot read the checkpoint {path}: {type(error).__name__}: {error}. Replace it "
            f"with a good copy, or start again with --overwrite"
        ) from error
    if not isinstance(state, dict):
        raise SearchError(f"{path} does not contain a search checkpoint; start again with --overwrite")
    return state
