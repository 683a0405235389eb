"""PuLP with its bundled CBC (pulp 3.x): the default backend. One thread, so runs repeat.

`import pulp` also imports highspy when it is installed; highspy >= 1.15 and OR-Tools cannot
share a process, so when OR-Tools is already loaded PuLP is imported with highspy hidden.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

from pipedecode.errors import PlanningError
from pipedecode.planner.lp import LinearProgram, Solution


def _highspy_clashes() -> bool:
    """True when highspy >= 1.15 is installed (not necessarily imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in version("highspy").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (1, 15)


@contextlib.contextmanager
def hidden_highspy():
    """Make `import highspy` fail inside the block if OR-Tools is loaded and highspy would clash."""
    ortools_loaded = any(m == "ortools" or m.startswith("ortools.") for m in sys.modules)
    hide = ortools_loaded and "highspy" not in sys.modules and _highspy_clashes()
    if hide:
        sys.modules["highspy"] = None    # import raises ImportError; PuLP marks HiGHS unavailable
    try:
        yield hide
    finally:
        if hide and sys.modules.get("highspy", 0) is None:
            del sys.modules["highspy"]


_pulp = None      # the module once imported (and its kept tracebacks dropped)


def _import_pulp():
    global _pulp
    if _pulp is None:
        try:
            with hidden_highspy():
                import pulp
        except ImportError as exc:
            raise PlanningError(f"PuLP is not installed ({exc}); `pip install 'pulp>=3,<4'` or "
                                f"use --solver ortools") from None
        drop_kept_tracebacks(pulp)
        _pulp = pulp
    return _pulp


def drop_kept_tracebacks(package) -> None:
    """Forget the tracebacks of the import errors PuLP keeps on the solver classes it could not
    load (`CPLEX_PY.err`, `COPT_DLL.err`, ...). A traceback holds its frames, and each frame
    its caller (f_back) with all its locals: whatever stack first imported PuLP (a generate
    call holding packed weights and a KV cache) would otherwise never be freed."""
    prefix = package.__name__ + "."
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package.__name__ or name.startswith(prefix)):
            continue
        for value in list(vars(module).values()):
            for holder in (value, *(vars(value).values() if isinstance(value, type) else ())):
                while isinstance(holder, BaseException):
                    holder.__traceback__ = None
                    holder = holder.__context__ or holder.__cause__


def solve_lp(lp: LinearProgram, *, time_limit_s: float = 30.0) -> Solution:
    pulp = _import_pulp()
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
