"""PuLP with its bundled CBC (pulp 3.x): the default backend. One thread, so runs repeat."""

from __future__ import annotations

import warnings

from pipedecode.errors import PlanningError
from pipedecode.planner.lp import LinearProgram, Solution


def solve_lp(lp: LinearProgram, *, time_limit_s: float = 30.0) -> Solution:
    try:
        import pulp
    except ImportError as exc:
        raise PlanningError(f"PuLP is not installed ({exc}); `pip install 'pulp>=3,<4'` or use "
                            f"--solver ortools") from None
    sense = pulp.LpMaximize if lp.maximize else pulp.LpMinimize
    prob = pulp.LpProblem(lp.name, sense)
    xs = {v.name: prob.add_variable(v.name, v.lo, v.hi,
                                    cat=pulp.LpInteger if v.integer else pulp.LpContinuous)
          for v in lp.variables}
    prob += pulp.lpSum(c * xs[n] for n, c in lp.objective)
    ops = {"<=": "__le__", ">=": "__ge__", "==": "__eq__"}
    for con in lp.constraints:
        expr = pulp.lpSum(c * xs[n] for n, c in con.terms)
        prob += (getattr(expr, ops[con.sense])(con.rhs), con.name)
    with warnings.catch_warnings():   # pulp 3.3 announces 4.0's changes; 3.x is pinned
        warnings.simplefilter("ignore", DeprecationWarning)
        cmd = pulp.PULP_CBC_CMD(msg=False, threads=1, timeLimit=time_limit_s)
        prob.solve(cmd)
    status = pulp.LpStatus[prob.status]
    if status != "Optimal" or prob.sol_status not in (pulp.LpSolutionOptimal,
                                                      pulp.LpSolutionIntegerFeasible):
        raise PlanningError(f"CBC found no solution for {lp.name} (status {status}); "
                            f"check that the batch's KV cache fits the device")
    values = {n: float(x.value() or 0.0) for n, x in xs.items()}
    objective = float(pulp.value(prob.objective) or 0.0)
    return Solution(values, objective, prob.sol_status == pulp.LpSolutionOptimal, "cbc")
