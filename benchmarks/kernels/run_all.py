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

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sections  # noqa: E402  (benchmarks/kernels/sections.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import record  # noqa: E402  (benchmarks/record.py)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=record.RESULTS)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--only", default="", help="comma-separated section names")
    args = parser.parse_args()
    t0 = time.time()
    from pipedecode.runtime.profile_gpu import CudaTimer

    results = {**record.environment(), "errors": {}}
    os.makedirs(args.out, exist_ok=True)
    timer = CudaTimer(reps=12, warmup=3)
    ctx = sections.Context(timer=timer, results=results, F=F, deadline=t0 + args.budget_s)
    chosen = [s for s in sections.ORDER if not args.only or s in args.only.split(",")]
    sections.run_sections(ctx, chosen, {n: getattr(sections, n) for n in chosen},
                          record.stem(args.out, "kernels", results) + ".json")
    markdown = sections.markdown(results)
    record.write(args.out, "kernels", results, markdown)
    print(markdown)
    print(f"total {time.time() - t0:.0f} s; errors in: {list(results['errors'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
