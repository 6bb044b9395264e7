"""Search spaces. Each space module provides `build_supernet(config)` and
`describe_architecture(model, table)`; the search loop reaches them through `get_space`."""

from __future__ import annotations

import importlib
from types import ModuleType

# Space name -> module that builds its supernet and describes a derived architecture.
SPACE_MODULES = {
    "nb201": "mergenas.spaces.nb201_net",
    "darts": "mergenas.spaces.darts_net",
}


def get_space(name: str) -> ModuleType:
    if name not in SPACE_MODULES:
        raise ValueError(f"unknown search space {name!r}; expected one of {', '.join(SPACE_MODULES)}")
    return importlib.import_module(SPACE_MODULES[name])
