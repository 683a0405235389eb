"""Solver backends, one file each, behind one signature:
`solve_lp(lp, *, time_limit_s) -> Solution`.

Backends import their library when called, never at package import.
"""

from __future__ import annotations

import importlib
from typing import Callable

from pipedecode.errors import PlanningError
from pipedecode.planner.lp import LinearProgram, Solution

BACKENDS = {"cbc": "pipedecode.planner.solvers.cbc_backend",
            "ortools": "pipedecode.planner.solvers.ortools_backend"}


def get_solver(name: str) -> Callable[..., Solution]:
    """The `solve_lp` function of backend `name` ("cbc" or "ortools")."""
    if name not in BACKENDS:
        raise PlanningError(f"unknown solver {name!r}; use one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).solve_lp


def solve_lp(lp: LinearProgram, solver: str = "cbc", *, time_limit_s: float = 30.0) -> Solution:
    return get_solver(solver)(lp, time_limit_s=time_limit_s)
