"""Named settings for searches: `ci` (seconds), `cpu` (a laptop), `paper` (the paper, on a GPU).

A preset fills every setting the caller leaves unset; explicit values always win. What the
`cpu` and `ci` presets change relative to the paper is listed in `PRESET_NOTES`.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    # The paper's NAS-Bench-201 search: 50 epochs, batch 64, the full CIFAR-10 training set
    # split into two halves, the 17-cell supernet.
    "paper": {"epochs": 50, "batch_size": 64, "train_limit": None, "cells_per_stage": 5},
    # A meaningful search on 2 CPU cores in a few minutes: the same 17-cell supernet, but a
    # random 4,000-image subset of the training set and 4 epochs.
    "cpu": {"epochs": 4, "batch_size": 64, "train_limit": 4000, "cells_per_stage": 5},
    # Smoke-test size for tests and notebook regression: a 5-cell supernet (1 cell per stage)
    # on 512 images for 2 epochs. Its cells show that the code runs, not what the method finds.
    "ci": {"epochs": 2, "batch_size": 32, "train_limit": 512, "cells_per_stage": 1},
}

PRESET_NOTES = {
    "paper": "the paper's settings: 50 epochs, batch 64, all 50,000 training images, 17 cells",
    "cpu": "4 epochs on 4,000 training images (the paper: 50 epochs on 50,000), 17 cells",
    "ci": "2 epochs on 512 images with 1 cell per stage: a smoke test, not a search",
}


def preset_settings(name: str) -> dict[str, object]:
    """Return a copy of a preset's settings, raising ValueError for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
