"""The planner: (model shape, device profile, workload) -> Schedule, on any machine.

Public face: `plan`, `build_problem`, `solve`, `load_schedule`, `Schedule` (and its parts).
Solver libraries (PuLP, OR-Tools) are imported only when a problem is solved, so loading a
schedule works where neither is installed (the GPU machine).
"""

from pipedecode.planner.api import plan, solve
from pipedecode.planner.problem import Problem, WaitingPrompt, build_problem
from pipedecode.planner.schedule import (SCHEDULE_VERSION, MicroBatch, Schedule, Slot,
                                         SwitchPoint, check_model, load_schedule)

__all__ = ["SCHEDULE_VERSION", "MicroBatch", "Problem", "Schedule", "Slot", "SwitchPoint",
           "WaitingPrompt", "build_problem", "check_model", "load_schedule", "plan", "solve"]
