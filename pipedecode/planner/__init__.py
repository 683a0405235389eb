"""The planner: (model shape, device profile, workload) -> Schedule, on any machine.

Public face: `plan`, `build_problem`, `solve`, `load_schedule`, `Schedule` (and its parts).
Solver libraries (PuLP, OR-Tools) are imported only when a problem is solved, so loading a
schedule works where neither is installed (the GPU machine).
"""

from __future__ import annotations

import importlib
from typing import Any

from pipedecode.planner.schedule import (SCHEDULE_VERSION, MicroBatch, Schedule, Slot,
                                         SwitchPoint, load_schedule)

_LAZY = {"plan": "pipedecode.planner.api", "build_problem": "pipedecode.planner.problem",
         "solve": "pipedecode.planner.api", "Problem": "pipedecode.planner.problem"}

__all__ = ["SCHEDULE_VERSION", "MicroBatch", "Schedule", "Slot", "SwitchPoint", "load_schedule",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipedecode.planner' has no attribute {name!r}")
