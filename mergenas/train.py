"""Train a DARTS-space network from scratch on CIFAR-10, as DARTS and MergeNAS evaluate a genotype.

The `paper` preset is the evaluation of Liu et al. (DARTS, ICLR 2019) that MergeNAS (IJCAI 2020,
Table 1) reuses: 20 cells at C=36 with reductions at cells 6 and 13, an auxiliary head after the
second reduction weighted 0.4, cutout 16, drop-path 0.2 (raised linearly from 0 over the
epochs), SGD with momentum 0.9, lr 0.025 with cosine decay to 0, weight decay 3e-4, gradient
clipping 5, batch 96, 600 epochs on the 50,000 training images, then the error on the 10,000
test images.

Run directory: `config.json` (settings and the genotype), `log.jsonl` (one record per epoch),
`checkpoint.pt` (rewritten atomically after every epoch, and at the step where SIGINT or
SIGTERM arrives) and `result.json` (test accuracy and parameters in millions). The checkpoint
contains the weights, optimiser, schedule, random-generator states and the position in the epoch.
Batch order and augmentation derive from (seed, epoch, step), so a resumed run repeats the
batches of an uninterrupted one, and on the CPU ends with bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mergenas import atomic
from mergenas.checkpoint import (
    capture_rng_state,
    check_finite_loss,
    stop_position,
    interrupt_guard,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from mergenas.device import resolve_device
from mergenas.data import BatchStream, load_cifar10, normalize_batch, to_tensor_images
from mergenas.spaces.darts import Genotype, load_genotype
from mergenas.spaces.darts_net import DartsNetwork

log = logging.getLogger(__name__)

CONFIG_NAME, LOG_NAME, RESULT_NAME = "config.json", "log.jsonl", "result.json"
_CUTOUT_STREAM = 7  # keeps cutout draws apart from BatchStream's own random streams

# Preset name -> settings that the caller left unset (None).
TRAIN_PRESETS: dict[str, dict[str, object]] = {
    # The DARTS/MergeNAS evaluation on a GPU.
    "paper": {"epochs": 600, "batch_size": 96, "train_limit": None, "test_limit": None, "cells": 20, "channels": 36},
    # A few minutes on a CPU: 8 cells at C=16 on 1,000 training images, 500 test images.
    # NOTE: the duration is an estimate that has not been timed on an idle machine.
    "cpu": {"epochs": 2, "batch_size": 32, "train_limit": 1000, "test_limit": 500, "cells": 8, "channels": 16},
    # A smoke test: it shows that the code runs, not how good a genotype is.
    "ci": {"epochs": 1, "batch_size": 8, "train_limit": 16, "test_limit": 16, "cells": 3, "channels": 4},
}


class TrainError(RuntimeError):
    """A training that cannot start or resume. The message gives the reason and the fix."""


@dataclass
class TrainConfig:
    """Every setting of a training; stored as `config.json` in the run directory."""

    genotype: str = "MERGENAS_PAPER"  # a name from GENOTYPES or a JSON file
    preset: str = "cpu"
    epochs: int | None = None
    batch_size: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    cells: int | None = None
    channels: int | None = None
    seed: int = 0
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary_weight: float = 0.4
    cutout: int = 16
    drop_path: float = 0.2
    device: str = "auto"
    data_root: str | None = None

    def resolved(self) -> "TrainConfig":
        """Return a copy with every unset setting filled from the preset, checked."""
        if self.preset not in TRAIN_PRESETS:
            raise TrainError(f"unknown preset {self.preset!r}; expected one of {', '.join(TRAIN_PRESETS)}")
        values = dataclasses.asdict(self)
        for key, value in TRAIN_PRESETS[self.preset].items():
            if values[key] is None:
                values[key] = value
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "cells", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainError(f"{name} must be a positive integer, got {value!r}")
        if self.channels % 2:
            raise TrainError(f"channels must be even (factorised reduce halves them), got {self.channels}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < self.batch_size):
                raise TrainError(f"{name} must be at least batch_size = {self.batch_size}, got {value!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise TrainError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if self.cutout < 0:
            raise TrainError(f"cutout must be a non-negative square side in pixels, got {self.cutout}")


def _resolve_device(name: str) -> torch.device:
    return resolve_device(name, TrainError)


def apply_cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image, centred at a random pixel and clipped at the border.

    The images are already normalised, so the square becomes the per-channel mean, as in DARTS.
    """
    if size == 0:
        return images
    batch, _, height, width = images.shape
    centre_y = torch.randint(0, height, (batch, 1), generator=generator).to(images.device)
    centre_x = torch.randint(0, width, (batch, 1), generator=generator).to(images.device)
    rows = torch.arange(height, device=images.device)[None, :]  # (1, H)
    cols = torch.arange(width, device=images.device)[None, :]  # (1, W)
    inside_rows = (rows >= centre_y - size // 2) & (rows < centre_y + size - size // 2)  # (B, H)
    inside_cols = (cols >= centre_x - size // 2) & (cols < centre_x + size - size // 2)  # (B, W)
    hole = inside_rows[:, :, None] & inside_cols[:, None, :]  # (B, H, W)
    return images.masked_fill(hole[:, None], 0.0)


def _cutout_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    key = np.random.SeedSequence([_CUTOUT_STREAM, seed, epoch, step]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(key))
    return generator


class Trainer:
    """One training run in one run directory: build, train epoch by epoch, checkpoint, test."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, genotype: Genotype | None = None, progress: bool = True):
        self.config = config.resolved()
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.device = _resolve_device(self.config.device)
        self.genotype = genotype if genotype is not None else load_genotype(self.config.genotype)

        torch.manual_seed(self.config.seed)
        self.model = DartsNetwork(self.genotype, channels=self.config.channels, cells=self.config.cells).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.config.lr, momentum=self.config.momentum, weight_decay=self.config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.config.epochs, eta_min=self.config.lr_min
        )
        self.epoch = 0  # epochs completed
        self.step = 0  # steps completed in the current epoch
        self.sums = {"loss": 0.0, "correct": 0, "count": 0}
        self.elapsed = 0.0
        self._load_data()

    def _load_data(self) -> None:
        cifar = load_cifar10(self.config.data_root)
        train_images, train_labels = cifar.x_train, cifar.y_train
        if self.config.train_limit is not None:
            train_images, train_labels = train_images[: self.config.train_limit], train_labels[: self.config.train_limit]
        test_images, test_labels = cifar.x_test, cifar.y_test
        if self.config.test_limit is not None:
            test_images, test_labels = test_images[: self.config.test_limit], test_labels[: self.config.test_limit]
        self.train_stream = BatchStream(
            to_tensor_images(train_images, self.device),
            torch.tensor(train_labels, dtype=torch.long, device=self.device),
            self.config.batch_size,
            seed=self.config.seed,
        )
        self.test_images = to_tensor_images(test_images, self.device)
        self.test_labels = torch.tensor(test_labels, dtype=torch.long, device=self.device)

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "sums": dict(self.sums),
            "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.sums, self.elapsed = dict(state["sums"]), state["elapsed"]

    # -- training --------------------------------------------------------------------------

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images = apply_cutout(images, self.config.cutout, _cutout_generator(self.config.seed, self.epoch, self.step))
        self.optimizer.zero_grad(set_to_none=True)
        logits, auxiliary_logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        if auxiliary_logits is not None:
            loss = loss + self.config.auxiliary_weight * F.cross_entropy(auxiliary_logits, labels)
        check_finite_loss(loss, "training", self.epoch, self.step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.sums["loss"] += loss.item()
        self.sums["correct"] += (logits.argmax(1) == labels).sum().item()
        self.sums["count"] += labels.numel()
        self.step += 1

    def _run_epoch(self, guard) -> dict | None:
        """Train the rest of the current epoch; return its record, or None when interrupted."""
        started = time.perf_counter()
        self.model.train()
        self.model.drop_path_prob = self.config.drop_path * self.epoch / self.config.epochs
        steps = self.train_stream.steps_per_epoch

        bar = tqdm(
            self.train_stream.epoch(self.epoch, start_step=self.step),
            total=steps,
            initial=self.step,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not self.progress,
            ascii=True,
            leave=False,
        )
        for images, labels in bar:
            self._train_step(images, labels)
            if guard.requested and self.step < steps:
                bar.close()
                self.elapsed += time.perf_counter() - started
                return None
        bar.close()
        self.elapsed += time.perf_counter() - started
        return self._finish_epoch(steps)

    def _finish_epoch(self, steps: int) -> dict:
        """Step the schedule, reset the running sums and return the epoch's log record."""
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        record = {
            "epoch": self.epoch + 1,
            "train_loss": self.sums["loss"] / steps,
            "train_acc": 100.0 * self.sums["correct"] / max(self.sums["count"], 1),
            "lr": lr,
            "drop_path_prob": self.model.drop_path_prob,
        }
        self.epoch += 1
        self.step = 0
        self.sums = {"loss": 0.0, "correct": 0, "count": 0}
        record["elapsed_s"] = round(self.elapsed, 3)
        return record

    @torch.no_grad()
    def test_accuracy(self, batch_size: int = 256) -> float:
        """Return the accuracy in percent on the test images, without augmentation."""
        self.model.eval()
        correct = 0
        for start in range(0, len(self.test_images), batch_size):
            images = normalize_batch(self.test_images[start:start + batch_size])
            logits, _ = self.model(images)
            correct += (logits.argmax(1) == self.test_labels[start:start + batch_size]).sum().item()
        return 100.0 * correct / len(self.test_images)

    def run(self, stop_after_epoch: int | None = None) -> dict | None:
        """Train the remaining epochs, checkpointing after each; test and write result.json.

        `stop_after_epoch` ends the run early, after that many epochs have completed and been
        checkpointed, and returns None (a resumable run, as after a kill).
        """
        log_path = self.run_dir / LOG_NAME
        records = _read_log(log_path)[: self.epoch]
        atomic.write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))
        with interrupt_guard() as guard:
            while self.epoch < self.config.epochs:
                if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                    return None
                record = self._run_epoch(guard)
                save_checkpoint(self.run_dir, self.state_dict())
                if record is not None:
                    atomic.append_line(log_path, json.dumps(record))
                    log.info("epoch %d: train acc %.2f%%, loss %.4f", record["epoch"], record["train_acc"], record["train_loss"])
                guard.raise_if_requested(
                    f"{stop_position(self.epoch, self.step)}; resume with --resume {self.run_dir}"
                )

        accuracy = self.test_accuracy()
        result = {
            "genotype": self.genotype.to_dict(),
            "test_accuracy": accuracy,
            "test_error": 100.0 - accuracy,
            "test_images": len(self.test_images),
            "parameters": self.model.num_parameters(),
            "parameters_m": self.model.num_parameters() / 1e6,
            "epochs": self.epoch,
            "seed": self.config.seed,
            "elapsed_s": round(self.elapsed, 3),
        }
        atomic.write_json(self.run_dir / RESULT_NAME, result)
        return result


def _read_log(path: Path) -> list[dict]:
    # A line cut by a kill mid-write ends the list; the epochs after it are redone.
    return atomic.read_json_lines(path)


def train(config: TrainConfig, run_dir: str | Path, overwrite: bool = False, progress: bool = True, stop_after_epoch: int | None = None) -> dict | None:
    """Start a training in `run_dir`; raise TrainError if it already contains a run."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_NAME).exists() and not overwrite:
        finished = "a finished" if (run_dir / RESULT_NAME).exists() else "an unfinished"
        raise TrainError(
            f"{run_dir} already contains {finished} run; pass --resume {run_dir} to continue it, "
            "--overwrite to start again there, or choose another --out"
        )
    trainer = Trainer(config, run_dir, progress=progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_NAME, "checkpoint.pt", LOG_NAME):
        (run_dir / stale).unlink(missing_ok=True)
    stored = {**dataclasses.asdict(trainer.config), "genotype_value": trainer.genotype.to_dict()}
    atomic.write_json(run_dir / CONFIG_NAME, stored)
    return trainer.run(stop_after_epoch=stop_after_epoch)


def resume(run_dir: str | Path, progress: bool = True, stop_after_epoch: int | None = None) -> dict | None:
    """Continue the run in `run_dir` from its checkpoint with its stored settings and genotype."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.exists():
        raise TrainError(f"{run_dir} contains no run to resume (no {CONFIG_NAME}); start one with --out {run_dir}")
    stored = json.loads(config_path.read_text())
    genotype = Genotype.from_dict(stored.pop("genotype_value"), origin=str(config_path))
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise TrainError(f"{config_path} has unknown settings {unknown}; it was not written by this version")
    trainer = Trainer(TrainConfig(**stored), run_dir, genotype=genotype, progress=progress)
    state = load_checkpoint(run_dir, trainer.device)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.run(stop_after_epoch=stop_after_epoch)
