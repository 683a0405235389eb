"""Plan the decode-step benchmark's grid: one schedule JSON per point, named as decode_step.py
looks them up (`decode_step_points.point_name`: `{model}_b{batch}_c{context}.json`,
`{model}_b{batch}_mixed.json`).

Runs wherever PuLP does (this CPU machine, or the GPU machine with the pulp wheel carried), so the
GPU benchmark times exactly the schedules the planner chose for the profile named here.

Usage: python benchmarks/plan_grid.py --device h200 --out DIR [--models ...] [--extra 1024x1024]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from decode_step_points import context_lens_for, grid_points, point_name  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True, help="profile name or JSON file")
    parser.add_argument("--out", required=True, help="folder for the schedule JSONs")
    parser.add_argument("--models", default="llama-3-8b,llama-2-7b")
    parser.add_argument("--extra", default="", help="points outside the grid, e.g. 1024x1024")
    args = parser.parse_args()
    from pipedecode.planner import plan

    extra = [tuple(int(v) for v in p.split("x")) for p in args.extra.split(",") if p]
    os.makedirs(args.out, exist_ok=True)
    for spec in args.models.split(","):
        for batch, context, mixed in grid_points(spec, extra):
            lens = context_lens_for(batch, context, mixed)
            name = point_name(spec, batch, context)
            try:
                schedule = plan(spec, args.device, lens, time_limit_s=10)
            except Exception as exc:  # noqa: BLE001 - e.g. KV does not fit: say so, go on
                print(f"{name}: no schedule ({type(exc).__name__}: {exc})")
                continue
            with open(os.path.join(args.out, name + ".json"), "w") as fh:
                fh.write(schedule.to_json())
            print(f"{name}: {schedule.mode} {schedule.memory_sms}/{schedule.compute_sms} SMs, "
                  f"predicted {schedule.predicted_step_us / 1e3:.2f} ms, sequential "
                  f"{schedule.sequential_step_us / 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
