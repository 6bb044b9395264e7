"""The `--device` setting shared by searches and trainings."""

from __future__ import annotations

import torch


def resolve_device(name: str, error: type[Exception] = ValueError) -> torch.device:
    """Map `auto`, `cpu`, `cuda` or `cuda:N` to a torch device, raising `error` when CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise error(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)
