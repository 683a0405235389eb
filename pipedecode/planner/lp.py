"""A solver-neutral mixed-integer linear program: variables, named constraints, objective.

Owns the data the formulations (`ilp.py`, `switch.py`) build and the backends in `solvers/`
translate. Knows nothing of decoding; imports no solver.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SENSES = ("<=", ">=", "==")


@dataclass(frozen=True)
class Var:
    name: str
    lo: float = 0.0
    hi: float | None = None
    integer: bool = False


@dataclass(frozen=True)
class Constraint:
    """sum(coef * var) <sense> rhs, with a unique name."""

    name: str
    terms: tuple[tuple[str, float], ...]
    sense: str
    rhs: float

    def __post_init__(self) -> None:
        if self.sense not in SENSES:
            raise ValueError(f"Constraint {self.name}: sense must be one of {SENSES}")


@dataclass(frozen=True)
class LinearProgram:
    name: str
    variables: tuple[Var, ...]
    constraints: tuple[Constraint, ...]
    objective: tuple[tuple[str, float], ...]
    maximize: bool = False

    def __post_init__(self) -> None:
        names = [v.name for v in self.variables]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate variable names")
        cnames = [c.name for c in self.constraints]
        if len(set(cnames)) != len(cnames):
            raise ValueError(f"{self.name}: duplicate constraint names")
        known = set(names)
        for c in self.constraints:
            for var, _ in c.terms:
                if var not in known:
                    raise ValueError(f"{self.name}: constraint {c.name} uses unknown var {var}")


@dataclass(frozen=True)
class Solution:
    """Values of an optimal (or time-limited feasible) solution."""

    values: dict[str, float] = field(hash=False)
    objective: float
    optimal: bool
    solver: str


class Builder:
    """Collects variables and named constraints, then freezes them into a LinearProgram."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._vars: list[Var] = []
        self._cons: list[Constraint] = []

    def var(self, name: str, lo: float = 0.0, hi: float | None = None,
            integer: bool = False) -> str:
        self._vars.append(Var(name, lo, hi, integer))
        return name

    def add(self, name: str, terms: dict[str, float] | list[tuple[str, float]], sense: str,
            rhs: float) -> None:
        items = terms.items() if isinstance(terms, dict) else terms
        merged: dict[str, float] = {}
        for var, coef in items:
            merged[var] = merged.get(var, 0.0) + coef
        self._cons.append(Constraint(name, tuple(merged.items()), sense, float(rhs)))

    def build(self, objective: dict[str, float], maximize: bool = False) -> LinearProgram:
        return LinearProgram(self.name, tuple(self._vars), tuple(self._cons),
                             tuple(objective.items()), maximize)
