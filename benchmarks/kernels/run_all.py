"""Check, then time, pipedecode's kernels across SM partitions against torch / cuBLAS / SDPA.

One device call: `PYTHONUNBUFFERED=1 python benchmarks/kernels/run_all.py --out $OUT`.
Sections (each guarded, so one failure does not lose the rest; each skipped once the time
budget is spent): environment and partitions (granted counts, SM ids of each side), GPU
correctness against the float32 references, streaming bandwidth per SM count, decode attention
(config sweep, then per SM count against SDPA and the streaming ceiling), linear layers (per SM
count against cuBLAS, proportionality, a tile sweep against the chooser), fused gate/up SiLU.
Writes kernels_<gpu>.json and kernels_<gpu>.md under --out and prints the short tables last.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sections  # noqa: E402  (benchmarks/kernels/sections.py)


def main() -> int:
    return sections.run_benchmark("kernels", __doc__.splitlines()[0],
                                  {n: getattr(sections, n) for n in sections.ORDER},
                                  sections.markdown, budget_s=420.0, reps=12)


if __name__ == "__main__":
    sys.exit(main())
