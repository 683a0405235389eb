"""Check the cost model's step times against the measured ones in decode-step results: every
measured interleaved split and the sequential step. CPU only.

Usage: python benchmarks/corun_model_check.py [-v] [RESULT.json ...]
       (default: benchmarks/results/decode_step_h100.json and decode_step_h200.json)
"""

from __future__ import annotations

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import record  # noqa: E402  (benchmarks/record.py)
from decode_step_points import MIXED, balanced_groups, context_lens_for  # noqa: E402
from pipedecode.models import model_shape  # noqa: E402
from pipedecode.planner.cost import CostModel  # noqa: E402
from pipedecode.profiles import load_profile, profile_name_for_gpu  # noqa: E402


def evaluate(result: dict) -> tuple[list[float], list[tuple]]:
    """(relative errors of the interleaved splits, rows (point, split, predicted ms, measured
    ms, error %)) of one result, priced on the profile of its GPU."""
    profile = load_profile(result.get("profile") or profile_name_for_gpu(result["gpu"]))
    errors, rows = [], []
    for r in result["rows"]:
        runs = r.get("runs", r.get("interleaved_by_split"))    # the older results' name
        if runs is None:
            continue
        cost = CostModel(model_shape(r["model"]), profile)
        lens = context_lens_for(r["batch"], None, MIXED[r["model"]]) \
            if isinstance(r["context"], str) else [r["context"]] * r["batch"]
        sizes = [(len(g), sum(lens[i] for i in g)) for g in balanced_groups(lens)]
        for name, measured in runs.items():
            if not name.startswith("split") or not name[5:].isdigit():
                continue
            predicted = cost.interleaved_step_us(sizes, int(name[5:]))
            errors.append((predicted - measured["us"]) / measured["us"])
            rows.append((r["name"], name, predicted / 1e3, measured["us"] / 1e3,
                         100 * errors[-1]))
        predicted = cost.sequential_step_us(r["batch"], sum(lens))
        rows.append((r["name"], "seq", predicted / 1e3, r["sequential_us"] / 1e3,
                     100 * (predicted - r["sequential_us"]) / r["sequential_us"]))
    return errors, rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv
    paths = [a for a in argv if a != "-v"] or [
        os.path.join(record.RESULTS, f"decode_step_{gpu}.json") for gpu in ("h100", "h200")]
    for path in paths:
        with open(path) as fh:
            result = json.load(fh)
        errors, rows = evaluate(result)
        if verbose:
            for row in rows:
                print(result["gpu"], row[0], row[1], *(f"{v:.1f}" for v in row[2:]))
        if errors:
            print(f"{result['gpu']}: interleaved splits, median |error| "
                  f"{100 * statistics.median(map(abs, errors)):.1f}%, median signed "
                  f"{100 * statistics.median(errors):.1f}%, n={len(errors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
