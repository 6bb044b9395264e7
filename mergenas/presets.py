"""Named settings for searches: `ci` (seconds), `cpu` (a laptop), `paper` (a GPU).

`paper` is the setting of the MergeNAS paper (Wang et al., IJCAI 2020).

A preset fills every setting the caller leaves unset (None); explicit values always win. Presets
are per search space, because the two spaces are searched with different settings.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, dict[str, object]]] = {
    "nb201": {
        # MergeNAS's NAS-Bench-201 search: 50 epochs, batch 64, the whole CIFAR-10 training set
        # split into two halves, the 17-cell supernet, alphas Adam lr 3e-4.
        "paper": {"epochs": 50, "batch_size": 64, "train_limit": None, "cells_per_stage": 5, "arch_lr": 3e-4},
        # A search on 2 CPU cores in a few minutes: the same 17-cell supernet, but a 4,000-image
        # subset of the training set and 4 epochs.
        "cpu": {"epochs": 4, "batch_size": 64, "train_limit": 4000, "cells_per_stage": 5, "arch_lr": 3e-4},
        # Smoke-test size for tests and notebook regression: 1 cell per stage, 512 images,
        # 2 epochs. Its cells show that the code runs, not what the method finds.
        "ci": {"epochs": 2, "batch_size": 32, "train_limit": 512, "cells_per_stage": 1, "arch_lr": 3e-4},
    },
    "darts": {
        "paper": {"epochs": 50, "batch_size": 64, "train_limit": None, "cells": 8, "arch_lr": 1e-4},
        "cpu": {"epochs": 2, "batch_size": 32, "train_limit": 2000, "cells": 5, "arch_lr": 1e-4},
        "ci": {"epochs": 1, "batch_size": 8, "train_limit": 32, "cells": 3, "arch_lr": 1e-4},
    },
}

PRESET_NOTES: dict[str, dict[str, str]] = {
    "nb201": {
        "paper": "the paper's settings: 50 epochs, batch 64, all 50,000 training images, 17 cells",
        "cpu": "4 epochs on 4,000 training images (the paper: 50 epochs on 50,000), 17 cells",
        "ci": "2 epochs on 512 images with 1 cell per stage: a smoke test, not a search",
    },
    "darts": {
        "paper": "the paper's settings: 50 epochs, batch 64, all 50,000 training images, 8 cells",
        "cpu": "2 epochs on 2,000 training images with 5 cells (the paper: 50 epochs, 8 cells)",
        "ci": "1 epoch on 32 images with 3 cells: a smoke test, not a search",
    },
}

PRESET_NAMES = ("ci", "cpu", "paper")


def preset_settings(name: str, space: str = "nb201") -> dict[str, object]:
    """Return a copy of a preset's settings, raising ValueError for an unknown name or space."""
    if space not in PRESETS:
        raise ValueError(f"unknown search space {space!r}; expected one of {', '.join(PRESETS)}")
    if name not in PRESETS[space]:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESET_NAMES)}")
    return dict(PRESETS[space][name])
