"""OR-Tools (pywraplp with SCIP) backend, by option.

OR-Tools cannot share a process with highspy >= 1.15 (their bundled libraries clash), so this
backend refuses, with a sentence, when such a highspy is already loaded, and turns an import
failure into a PlanningError instead of breaking the install.
"""

from __future__ import annotations

import sys

from pipedecode.errors import PlanningError
from pipedecode.planner.lp import LinearProgram, Solution


def _check_highspy() -> None:
    if "highspy" not in sys.modules or sys.modules["highspy"] is None:
        return
    from pipedecode.planner.solvers.cbc_backend import _highspy_clashes

    if _highspy_clashes():
        raise PlanningError("OR-Tools cannot be loaded in a process that has loaded highspy "
                            ">= 1.15 (PuLP loads it when installed); use --solver cbc")


def _import_pywraplp():
    _check_highspy()
    try:
        from ortools.linear_solver import pywraplp
    except (ImportError, OSError) as exc:
        raise PlanningError(f"OR-Tools could not be imported ({type(exc).__name__}: {exc}); "
                            f"`pip install ortools` or use --solver cbc") from None
    return pywraplp


def solve_lp(lp: LinearProgram, *, time_limit_s: float = 30.0) -> Solution:
    pywraplp = _import_pywraplp()
    solver = pywraplp.Solver.CreateSolver("SCIP") or pywraplp.Solver.CreateSolver("CBC")
    if solver is None:
        raise PlanningError("this OR-Tools build has neither SCIP nor CBC; use --solver cbc")
    solver.SetNumThreads(1)
    solver.SetTimeLimit(int(time_limit_s * 1000))
    inf = solver.infinity()
    xs = {v.name: (solver.IntVar if v.integer else solver.NumVar)(
        v.lo, inf if v.hi is None else v.hi, v.name) for v in lp.variables}
    for con in lp.constraints:
        lo, hi = {"<=": (-inf, con.rhs), ">=": (con.rhs, inf), "==": (con.rhs, con.rhs)}[con.sense]
        row = solver.Constraint(lo, hi, con.name)
        for n, c in con.terms:
            row.SetCoefficient(xs[n], row.GetCoefficient(xs[n]) + c)
    objective = solver.Objective()
    for n, c in lp.objective:
        objective.SetCoefficient(xs[n], objective.GetCoefficient(xs[n]) + c)
    objective.SetMaximization() if lp.maximize else objective.SetMinimization()
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        raise PlanningError(f"OR-Tools found no solution for {lp.name} (status {status}); "
                            f"check that the batch's KV cache fits the device")
    values = {n: x.solution_value() for n, x in xs.items()}
    return Solution(values, objective.Value(), status == pywraplp.Solver.OPTIMAL, "ortools")
