"""Checkpoint helpers shared by searches and trainings.

They cover random-generator states, setting checks, a guard that turns SIGINT and SIGTERM into a
request to stop at the next safe point, and a check that stops a run on a NaN or infinite loss.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mergenas import atomic

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite. The run directory keeps the last good checkpoint."""


class RunInterrupted(Exception):
    """A run stopped on SIGINT or SIGTERM. `exit_status` is 128 + the signal number, as shells report it."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number


def stop_position(epoch: int, step: int) -> str:
    """Describe where a run stopped, counting from 1 as log.jsonl does.

    `epoch` is the number of completed epochs and `step` the steps completed in the next one.
    """
    if step == 0:
        return f"after epoch {epoch}"
    return f"after step {step} of epoch {epoch + 1}"


def check_finite_loss(loss, which: str, epoch: int, step: int) -> None:
    """Raise NonFiniteLossError when `loss` (a tensor or a float) is NaN or infinite.

    `which` names the loss in the message (e.g. "weight", "architecture"). `epoch` and `step` are
    0-based indices; the message counts from 1, as log.jsonl and the progress bars do.
    """
    value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
    if math.isfinite(value):
        return
    raise NonFiniteLossError(
        f"the {which} loss became {value} in step {step + 1} of epoch {epoch + 1}, so "
        "the run stopped; a checkpoint written before this step stays as it was. Try a lower "
        "learning rate (--lr or --arch-lr), a lower weight decay or a smaller gradient clip, or "
        "start again with another seed."
    )


class InterruptGuard:
    """The state of an `interrupt_guard` block: whether a stop was requested, and by which signal."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    @property
    def signal_name(self) -> str | None:
        return None if self.signal_number is None else signal.Signals(self.signal_number).name

    def raise_if_requested(self, where: str = "") -> None:
        """Raise RunInterrupted when a signal arrived; call it after the checkpoint is saved."""
        if self.signal_number is None:
            return
        detail = f" {where}" if where else ""
        raise RunInterrupted(f"stopped by {self.signal_name}{detail}", self.signal_number)


@contextmanager
def interrupt_guard(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[InterruptGuard]:
    """Turn SIGINT and SIGTERM into a flag that the caller checks at safe points.

    Inside the block, the first signal only sets `guard.requested`, so the caller can finish the
    current step, save a checkpoint and then call `guard.raise_if_requested()`. A second signal
    raises RunInterrupted at once, without a checkpoint. The previous handlers come back when the
    block ends. Signal handlers can only be installed in the main thread, so in any other thread
    the guard installs nothing and `requested` stays False.
    """
    guard = InterruptGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return

    def handle(signal_number, frame):
        if guard.requested:
            raise RunInterrupted(
                f"stopped by a second {signal.Signals(signal_number).name} before the checkpoint "
                "of the current step was saved; --resume continues from the last checkpoint, "
                "or starts the run again when there is none",
                signal_number,
            )
        guard.signal_number = signal_number
        log.warning("%s received; stopping after the current step", signal.Signals(signal_number).name)

    previous = {number: signal.signal(number, handle) for number in signals}
    try:
        yield guard
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def capture_rng_state() -> dict:
    """The state of every random generator a run draws from (Python, NumPy, torch CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, state: dict) -> Path:
    """Write `checkpoint.pt` atomically: a kill leaves the previous one or this one, whole."""
    path = Path(run_dir) / CHECKPOINT_NAME
    atomic.save_torch(path, state)
    return path


def load_checkpoint(run_dir: str | Path, device: torch.device | str = "cpu") -> dict | None:
    """Load the run's checkpoint, or return None when it has none yet."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    return torch.load(path, map_location=device, weights_only=False)


def setting_differences(stored: dict, requested: dict, safe_to_change: set[str] = frozenset()) -> list[str]:
    """Describe each setting in `requested` that differs from `stored` and is not safe to change."""
    differences = []
    for key, value in requested.items():
        if key in safe_to_change or key not in stored:
            continue
        if stored[key] != value:
            differences.append(f"{key}: stored {stored[key]!r}, requested {value!r}")
    return differences
