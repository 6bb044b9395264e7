"""Checkpoint helpers shared by searches and trainings: random states and setting checks."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from mergenas import atomic

CHECKPOINT_NAME = "checkpoint.pt"


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
    """The run's checkpoint, or None when it has none yet."""
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
