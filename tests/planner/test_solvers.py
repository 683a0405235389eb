import sys

import pytest

from pipedecode.errors import PlanningError
from pipedecode.planner.lp import Builder
from pipedecode.planner.solvers import cbc_backend, get_solver, ortools_backend, solve_lp

SOLVERS = ("cbc", "ortools")


def _knapsack():
    b = Builder("knapsack")
    weights, values = (3, 4, 5, 6), (4, 5, 6, 8)
    for i in range(4):
        b.var(f"x{i}", 0, 1, integer=True)
    b.add("capacity", {f"x{i}": w for i, w in enumerate(weights)}, "<=", 10)
    return b.build({f"x{i}": v for i, v in enumerate(values)}, maximize=True)


@pytest.mark.parametrize("solver", SOLVERS)
def test_known_optimum(solver):
    solution = solve_lp(_knapsack(), solver)
    assert solution.optimal and solution.objective == pytest.approx(13.0)   # items 1 and 3
    assert [round(solution.values[f"x{i}"]) for i in range(4)] == [0, 1, 0, 1]


@pytest.mark.parametrize("solver", SOLVERS)
def test_infeasible_raises_planning_error(solver):
    b = Builder("infeasible")
    b.var("x", 0, 1, integer=True)
    b.add("too_much", {"x": 1.0}, ">=", 2)
    with pytest.raises(PlanningError, match="no solution"):
        solve_lp(b.build({"x": 1.0}), solver)


def test_unknown_solver():
    with pytest.raises(PlanningError, match="cbc, ortools"):
        get_solver("gurobi")


def test_ortools_refuses_beside_new_highspy(monkeypatch):
    monkeypatch.setitem(sys.modules, "highspy", object())
    monkeypatch.setattr("importlib.metadata.version", lambda name: "1.15.0")
    with pytest.raises(PlanningError, match="highspy >= 1.15"):
        ortools_backend.solve_lp(_knapsack())


def test_old_highspy_is_no_obstacle(monkeypatch):
    monkeypatch.setitem(sys.modules, "highspy", object())
    monkeypatch.setattr("importlib.metadata.version", lambda name: "1.14.2")
    assert ortools_backend.solve_lp(_knapsack()).objective == pytest.approx(13.0)


def test_pulp_is_imported_with_highspy_hidden_once_ortools_is_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "highspy", raising=False)
    monkeypatch.setitem(sys.modules, "ortools", sys.modules.get("ortools") or object())
    monkeypatch.setattr("importlib.metadata.version", lambda name: "1.15.1")
    with cbc_backend.hidden_highspy() as hidden:
        assert hidden and sys.modules["highspy"] is None
        with pytest.raises(ImportError):
            import highspy  # noqa: F401
    assert "highspy" not in sys.modules
    monkeypatch.setattr("importlib.metadata.version", lambda name: "1.14.0")
    with cbc_backend.hidden_highspy() as hidden:
        assert not hidden


def test_ortools_import_failure_is_a_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "ortools.linear_solver", None)
    monkeypatch.setitem(sys.modules, "ortools.linear_solver.pywraplp", None)
    with pytest.raises(PlanningError, match="--solver cbc"):
        ortools_backend.solve_lp(_knapsack())


def test_package_import_loads_no_solver():
    import subprocess

    code = ("import sys, pipedecode.planner, pipedecode.profiles; "
            "print(any(m.split('.')[0] in ('pulp', 'ortools') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_first_pulp_import_does_not_pin_the_callers_locals():
    """PuLP keeps its optional solvers' import errors; their tracebacks must not keep alive the
    stack that first imported it (a generate call's packed weights and KV cache)."""
    import subprocess
    import sys

    code = "\n".join([
        "import gc, weakref",
        "from pipedecode.planner import plan",
        "class Big: pass",
        "def call():",
        "    big = Big()",
        "    plan('tiny-llama', 'h100', [10, 20, 30])",
        "    return weakref.ref(big)",
        "ref = call(); gc.collect()",
        "print('pinned' if ref() is not None else 'freed')"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.strip().endswith("freed"), done.stdout[-500:] + done.stderr[-2000:]
