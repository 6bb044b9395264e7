"""The bi-level architecture search of DARTS, shared by the DARTS and the MergeNAS supernets.

Each iteration takes one alpha step on a search-validation batch (Adam) and then one weight
step on a search-training batch (SGD with momentum, cosine learning rate, gradient clipping),
the first-order DARTS approximation (Liu et al., ICLR 2019). Every epoch appends one JSON line
to `log.jsonl` in the run directory and rewrites `checkpoint.pt`; the run ends with
`result.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mergenas import atomic
from mergenas.data import BatchStream, load_cifar10, split_search_halves, to_tensor_images
from mergenas.presets import preset_settings
from mergenas.spaces import get_space

log = logging.getLogger(__name__)

METHODS = ("darts", "mergenas")
SPACES = ("nb201", "darts")
ORDERS = (1, 2)


class SearchError(RuntimeError):
    """A search that cannot start or cannot go on; the message says why and what to do."""


class NonFiniteLossError(SearchError):
    """The loss became NaN or infinite; the last checkpoint is kept."""


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
    data_root: str | None = None

    def resolved(self) -> "SearchConfig":
        """A copy with every unset (None) setting filled from the preset, checked."""
        settings = preset_settings(self.preset, self.space)
        values = dataclasses.asdict(self)
        for key, value in settings.items():
            if values.get(key) is None:
                values[key] = value
        values["arch_betas"] = tuple(values["arch_betas"])
        config = SearchConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.space not in SPACES:
            raise SearchError(f"unknown search space {self.space!r}; expected one of {', '.join(SPACES)}")
        if self.method not in METHODS:
            raise SearchError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.order not in ORDERS:
            raise SearchError(f"order must be 1 or 2, got {self.order!r}")
        depth = "cells_per_stage" if self.space == "nb201" else "cells"
        for name in ("epochs", "batch_size", depth, "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SearchError(f"{name} must be a positive integer, got {value!r}")
        if self.train_limit is not None and (not isinstance(self.train_limit, int) or self.train_limit < 2 * self.batch_size):
            raise SearchError(
                f"train_limit must be at least 2 * batch_size = {2 * self.batch_size} "
                f"(one batch per search half), got {self.train_limit!r}"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise SearchError(f"unknown device {self.device!r}; expected auto, cpu or cuda")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SearchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SearchError(f"unknown search settings {unknown}; known: {sorted(known)}")
        values = dict(values)
        if "arch_betas" in values:
            values["arch_betas"] = tuple(values["arch_betas"])
        return cls(**values)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SearchError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def _try_load_table(data_root):
    """The NAS-Bench-201 table, or None (with a warning) when it is not there."""
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
    """The unrolled (second-order) architecture step of DARTS; see `mergenas.second_order`."""
    from mergenas.second_order import second_order_alpha_step as step

    return step(model, x_train, y_train, x_valid, y_valid, weight_optimizer, arch_optimizer)


def _check_finite(loss: torch.Tensor, which: str, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"the {which} loss became {loss.item()} at epoch {epoch}, step {step}; the run "
            "directory keeps the last good checkpoint. Try a lower learning rate (--lr), "
            "a lower weight decay, or resume from the checkpoint with another seed."
        )


class Searcher:
    """One search run in one run directory: build, train epoch by epoch, checkpoint, finish."""

    def __init__(self, config: SearchConfig, run_dir: str | Path, progress: bool = True):
        self.config = config.resolved()
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.device = resolve_device(self.config.device)

        self.space = get_space(self.config.space)
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
        self.elapsed = 0.0  # seconds spent in completed epochs, over all resumptions
        self._load_data()
        self.table = _try_load_table(self.config.data_root) if self.config.space == "nb201" else None

    def _load_data(self) -> None:
        cifar = load_cifar10(self.config.data_root)
        images, labels = cifar.x_train, cifar.y_train
        if self.config.train_limit is not None:
            images, labels = images[: self.config.train_limit], labels[: self.config.train_limit]
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

    def run_epoch(self) -> dict:
        epoch = self.epoch
        started = time.perf_counter()
        self.model.train()
        train, valid = _Running(), _Running()
        batches = zip(self.train_stream.epoch(epoch), self.valid_stream.epoch(epoch))
        bar = tqdm(
            batches,
            total=self.steps_per_epoch,
            desc=f"{self.config.method} epoch {epoch + 1}/{self.config.epochs}",
            disable=not self.progress,
            mininterval=2.0,
            ascii=True,
            leave=False,
        )
        for step, ((x_train, y_train), (x_valid, y_valid)) in enumerate(bar):
            if step >= self.steps_per_epoch:
                break
            if self.config.order == 2:
                loss_v, logits_v = second_order_alpha_step(
                    self.model, x_train, y_train, x_valid, y_valid,
                    self.weight_optimizer, self.arch_optimizer,
                )
            else:
                loss_v, logits_v = self._alpha_step(x_valid, y_valid)
            _check_finite(loss_v, "architecture", epoch, step)
            loss_t, logits_t = self._weight_step(x_train, y_train)
            _check_finite(loss_t, "weight", epoch, step)
            valid.add(loss_v, logits_v, y_valid)
            train.add(loss_t, logits_t, y_train)
        bar.close()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.epoch += 1
        self.elapsed += time.perf_counter() - started

        train_loss, train_acc = train.summary()
        valid_loss, valid_acc = valid.summary()
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
        return record

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]
        self.elapsed = state["elapsed"]

    # -- the whole run ---------------------------------------------------------------------------

    def run(self) -> dict:
        """Train the remaining epochs, checkpointing after each, and write result.json."""
        log_path = self.run_dir / "log.jsonl"
        records = _read_log(log_path)[: self.epoch]
        atomic.write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))
        outer = tqdm(
            total=self.config.epochs,
            initial=self.epoch,
            desc=f"{self.config.method} search",
            disable=not self.progress,
            ascii=True,
        )
        while self.epoch < self.config.epochs:
            record = self.run_epoch()
            records.append(record)
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            atomic.save_torch(self.run_dir / "checkpoint.pt", self.state_dict())
            outer.update(1)
            outer.set_postfix_str(f"valid acc {record['valid_acc']:.1f}%")
            log.info("epoch %d: valid acc %.2f%%, cell %s", record["epoch"], record["valid_acc"], record["cell"])
        outer.close()

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
        atomic.write_json(self.run_dir / "result.json", result)
        return result


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill mid-write; everything after it is redone
    return records


def read_log(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run directory."""
    return _read_log(Path(run_dir) / "log.jsonl")


def search(
    config: SearchConfig,
    run_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run a new search in `run_dir`; refuse a directory that already holds a run."""
    run_dir = Path(run_dir)
    if (run_dir / "config.json").exists() and not overwrite:
        raise SearchError(
            f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, "
            "--overwrite to start again there, or choose another --out"
        )
    searcher = Searcher(config, run_dir, progress=progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "checkpoint.pt", "log.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)
    atomic.write_json(run_dir / "config.json", searcher.config.to_dict())
    return searcher.run()


def resume(run_dir: str | Path, progress: bool = True, epochs: int | None = None) -> dict:
    """Continue the run in `run_dir` from its last checkpoint, with its stored settings."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise SearchError(f"{run_dir} holds no run to resume (no config.json); start one with --out {run_dir}")
    config = SearchConfig.from_dict(json.loads(config_path.read_text()))
    if epochs is not None and epochs != config.epochs:
        config.epochs = epochs
        atomic.write_json(config_path, config.to_dict())
    searcher = Searcher(config, run_dir, progress=progress)
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists():
        searcher.load_state_dict(torch.load(checkpoint, map_location=searcher.device, weights_only=False))
        # The cosine schedule's length follows the (possibly raised) epoch count.
        searcher.scheduler.T_max = searcher.config.epochs
    return searcher.run()
