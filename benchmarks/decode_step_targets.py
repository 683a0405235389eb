"""The decode-step grid's overlap targets, computed from its rows and reported met or not.

Owns `targets(rows)` and `timed(row)` (a row's planner times, also from results that named them
`planner_us` / `planner_guard_us`). Over the measured points:
- best_speedup: the planner's step as a user gets it (`planner_guarded_us`: the executor's guard
  included) over pipedecode sequential, >= 1.25x at the best point;
- speedup_points: >= 1.1x at three or more points;
- never_slower: >= 0.99x at every point;
- sequential_floor: the sequential step at >= 85% of its own floor (`op_floor_us`: the sum over
  its ops of max(FLOPs / peak, bytes / HBM bandwidth)) at every point;
- prediction: the planner's predicted step within 5% of the measured time of its schedule as
  planned (`planner_unguarded_us`), the median over the points.
Each entry holds the target, the numbers behind it, where, and `met`; `coresident` (no target)
the best co-resident run against sequential. Pure: no GPU, no files.
"""

from __future__ import annotations

import statistics

BEST_SPEEDUP, GOOD_SPEEDUP, GOOD_POINTS = 1.25, 1.1, 3
NEVER_BELOW, SEQUENTIAL_FLOOR, PREDICTION = 0.99, 0.85, 0.05


def timed(row: dict) -> tuple[float | None, float | None]:
    """(guarded, unguarded) planner microseconds of a row, None where not measured."""
    unguarded = row.get("planner_unguarded_us", row.get("planner_us"))
    guarded = row.get("planner_guarded_us", row.get("planner_guard_us", unguarded))
    return guarded, unguarded


def _measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r.get("skipped") and r.get("sequential_us")]


def _extreme(pairs: list[tuple[str, float]], pick) -> tuple[str, float]:
    return pick(pairs, key=lambda p: p[1])


def targets(rows: list[dict]) -> dict:
    """Every target with its numbers and whether it is met (see the module docstring)."""
    rows = _measured(rows)
    out: dict = {"points": len(rows)}
    planned = [(r["name"], r["sequential_us"] / timed(r)[0]) for r in rows if timed(r)[0]]
    if planned:
        best, worst = _extreme(planned, max), _extreme(planned, min)
        good = sorted(name for name, x in planned if x >= GOOD_SPEEDUP)
        out["best_speedup"] = {"target": BEST_SPEEDUP, "best": best[1], "best_at": best[0],
                               "met": best[1] >= BEST_SPEEDUP}
        out["speedup_points"] = {"target": f">= {GOOD_SPEEDUP}x at {GOOD_POINTS} or more points",
                                 "points": good, "count": len(good),
                                 "met": len(good) >= GOOD_POINTS}
        out["never_slower"] = {"target": NEVER_BELOW, "worst": worst[1], "worst_at": worst[0],
                               "below": sorted(n for n, x in planned if x < NEVER_BELOW),
                               "met": worst[1] >= NEVER_BELOW}
        errors = [(r["name"], abs(r["planner_predicted_us"] - timed(r)[1]) / timed(r)[1])
                  for r in rows if r.get("planner_predicted_us") and timed(r)[1]]
        if errors:
            median = statistics.median(e for _, e in errors)
            worst_err = _extreme(errors, max)
            out["prediction"] = {"target": PREDICTION, "median": median,
                                 "worst": worst_err[1], "worst_at": worst_err[0],
                                 "points": len(errors), "met": median <= PREDICTION}
    floors = [(r["name"], r["op_floor_us"] / r["sequential_us"]) for r in rows
              if r.get("op_floor_us")]
    if floors:
        worst = _extreme(floors, min)
        out["sequential_floor"] = {"target": SEQUENTIAL_FLOOR, "worst": worst[1],
                                   "worst_at": worst[0],
                                   "below": sorted(n for n, x in floors if x < SEQUENTIAL_FLOOR),
                                   "met": worst[1] >= SEQUENTIAL_FLOOR}
    co = [(r["name"], r["sequential_us"] / r["coresident_best_us"]) for r in rows
          if r.get("coresident_best_us")]
    if co:
        best = _extreme(co, max)
        out["coresident"] = {"best_speedup": best[1], "best_at": best[0],
                             "faster_than_sequential": sorted(n for n, x in co if x > 1.0)}
    return out


def lines(result: dict) -> list[str]:
    """The targets as markdown bullets, each met or not, with the numbers behind it."""
    t = result.get("targets") or targets(result.get("rows", []))
    out = [f"## Targets ({t['points']} measured points)", ""]

    def met(entry: dict) -> str:
        return "**met**" if entry["met"] else "**not met**"

    if "best_speedup" in t:
        b, g, w = t["best_speedup"], t["speedup_points"], t["never_slower"]
        out += [f"- planner (guarded) >= {b['target']}x over sequential at the best point: "
                f"{b['best']:.3f}x at {b['best_at']}: {met(b)}",
                f"- planner (guarded) >= {GOOD_SPEEDUP}x at {GOOD_POINTS} or more points: "
                f"{g['count']} ({', '.join(g['points']) or 'none'}): {met(g)}",
                f"- planner (guarded) never below {w['target']}x: worst {w['worst']:.3f}x at "
                f"{w['worst_at']}: {met(w)}"]
    else:
        out.append("- planner targets: no point ran a planner schedule (give --schedules)")
    if "sequential_floor" in t:
        f = t["sequential_floor"]
        out.append(f"- sequential >= {f['target']:.0%} of its own floor (sum over ops of "
                   f"max(FLOPs / peak, bytes / bandwidth)) everywhere: worst {f['worst']:.1%} "
                   f"at {f['worst_at']}: {met(f)}")
    if "prediction" in t:
        p = t["prediction"]
        out.append(f"- predicted within {p['target']:.0%} of the measured planned step, median "
                   f"over {p['points']} points: {p['median']:.1%} (worst {p['worst']:.1%} at "
                   f"{p['worst_at']}): {met(p)}")
    if "coresident" in t:
        c = t["coresident"]
        out.append(f"- (no target) the best co-resident step: {c['best_speedup']:.3f}x over "
                   f"sequential at {c['best_at']}; faster than sequential at "
                   f"{len(c['faster_than_sequential'])} points")
    return out + [""]
