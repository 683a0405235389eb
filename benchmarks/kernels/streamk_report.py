"""Markdown from streamk.py: `python benchmarks/kernels/streamk_report.py RESULT.json [V1.json]`.

Ratio to proportional = time on n SMs / (reference time on all SMs x all / n); the target is
<= 1.10. Two references: the better of cuBLAS and the best Triton config measured on all SMs
("ref best"), and the best Triton config on all SMs ("ref Triton", the kernel's own scaling).
"before" is the better of cuBLAS and the Triton config the chooser picks without the split
tail (the kernel as it was); "after" the better of cuBLAS and the config `tiling.choose_config`
picks now, its time looked up among the configs the run measured (the chooser's candidates at
these points are all measured; a pick that was not is shown as "—"). The optional V1.json is
the first run, with the classic stream-K split (equal runs of K iterations per program).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import record  # noqa: E402  (benchmarks/record.py)

from pipedecode.runtime.kernels.tiling import choose_config  # noqa: E402


def _f(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"


def _tag(cfg):
    if cfg.get("tail_split", 1) > 1:
        extra = f"/t{cfg['tail_split']}"
    elif cfg.get("stream_k"):
        extra = "/sk"
    else:
        extra = f"/split{cfg['split_k']}" if cfg["split_k"] > 1 else ""
    return f"{cfg['block_m']}x{cfg['block_n']}{extra}"


def _best(rows):
    return min(rows, key=lambda r: r["us"]) if rows else None


def _measured(row):
    """Each config measured in the row once, at the lower time where it was timed twice (a
    repeated graph timing can land 1.3-1.6x high; see `repeats`)."""
    best = {}
    for r in [row["old"], row["new"]] + row.get("plain", []) + row.get("tail", []):
        key = json.dumps(r["config"], sort_keys=True)
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    return list(best.values())


def _lookup(row, cfg):
    return next((r for r in _measured(row) if r["config"] == cfg), None)


def chosen_now(p, sms, row):
    """The chooser's pick today for this point, with its measured time (None if unmeasured)."""
    cfg = asdict(choose_config(p["tokens"], p["n"], p["k"], sms, pair=p["pair"]))
    hit = _lookup(row, cfg)
    return {"config": cfg, "us": hit["us"] if hit else None}


def repeats(res):
    """Pairs of timings of one launch in one run: the old choice again in the plain sweep, and
    the chosen split tail with preallocated counters (no fill) beside the one with a fill."""
    out = []
    for p in res["points"]:
        for row in p["by_sms"].values():
            out += [(row["old"]["us"], r["us"]) for r in row.get("plain", [])
                    if r["config"] == row["old"]["config"]]
            if "new_prealloc_locks_us" in row:
                out.append((row["new"]["us"], row["new_prealloc_locks_us"]))
    return sorted(max(a, b) / min(a, b) for a, b in out)


def summarize(p, total):
    """Per partition of one point: the times and the ratios (see the module docstring)."""
    rows = {int(s): r for s, r in p["by_sms"].items()}
    full = rows[total]
    tri_full = _best(_measured(full))
    best_full = min(v for v in (full.get("cublas"), tri_full["us"]) if v is not None)
    out = []
    for n, row in sorted(rows.items(), reverse=True):
        if n == total:
            continue
        scale = total / n
        cub, now, old = row.get("cublas"), chosen_now(p, n, row), _lookup(row, row["old"]["config"])
        before = min(v for v in (cub, old["us"]) if v is not None)
        after = min(v for v in (cub, now["us"] or float("inf")) if v is not None)
        out.append({"sms": n, "cublas": cub, "old": old, "now": now,
                    "best_plain": _best(row.get("plain", [])), "best_tail": _best(row["tail"]),
                    "prealloc": row.get("new_prealloc_locks_us"),
                    "before": before / (best_full * scale), "after": after / (best_full * scale),
                    "oracle": min(v for v in (cub, _best(_measured(row))["us"]) if v is not None)
                    / (best_full * scale),
                    "old_t": old["us"] / (tri_full["us"] * scale),
                    "now_t": (now["us"] or float("inf")) / (tri_full["us"] * scale),
                    "cub_full": full.get("cublas"), "tri_full": tri_full})
    return out


def _cell(r):
    return "—" if r is None else f"{_f(r['us'])} ({_tag(r['config'])})"


def _partitions(res, total):
    lines = ["| shape | tokens | all SMs: cuBLAS / best Triton µs | n | cuBLAS µs | Triton "
             "before µs | best plain µs | Triton now µs | best split tail µs | before / after "
             "(ref best) | before / after (ref Triton) |", "|---|---|---|---|---|---|---|---|---"
             "|---|---|"]
    counts = dict.fromkeys(("before", "after", "oracle", "old_t", "now_t", "n"), 0)
    for p in res["points"]:
        for s in summarize(p, total):
            counts["n"] += 1
            for key in ("before", "after", "oracle", "old_t", "now_t"):
                counts[key] += s[key] <= 1.10
            lines.append(
                f"| {p['shape']} ({p['n']}x{p['k']}) | {p['tokens']} | {_f(s['cub_full'])} / "
                f"{_cell(s['tri_full'])} | {s['sms']} | {_f(s['cublas'])} | {_cell(s['old'])} | "
                f"{_cell(s['best_plain'])} | {_cell(s['now'])} | {_cell(s['best_tail'])} | "
                f"{s['before']:.2f} / {s['after']:.2f} | {s['old_t']:.2f} / {s['now_t']:.2f} |")
    return lines, counts


def _all_sms(res, total):
    lines = ["| shape | tokens | cuBLAS µs | Triton before µs | Triton now µs | best plain or "
             "split-K µs | best split tail µs |", "|---|---|---|---|---|---|---|"]
    for p in res["points"]:
        row = {int(s): r for s, r in p["by_sms"].items()}[total]
        lines.append(f"| {p['shape']} | {p['tokens']} | {_f(row.get('cublas'))} | "
                     f"{_cell(_lookup(row, row['old']['config']))} | "
                     f"{_cell(chosen_now(p, total, row))} | "
                     f"{_cell(_best(row.get('plain', [])))} | {_cell(_best(row['tail']))} |")
    return lines


def classic(v1, total):
    """The first run's classic stream-K against the plain kernel, per point and SM count."""
    lines = ["| shape | tokens | n | Triton plain (chooser) µs | best classic stream-K µs | "
             "stream-K / plain |", "|---|---|---|---|---|---|"]
    for p in v1["points"]:
        for sms, row in sorted(((int(s), r) for s, r in p["by_sms"].items()), reverse=True):
            sk = _best(row["sk"])
            lines.append(f"| {p['shape']} | {p['tokens']} | {sms} | {_cell(row['old'])} | "
                         f"{_cell(sk)} | {sk['us'] / row['old']['us']:.2f} |")
    return lines


def render(res: dict, v1: dict | None = None) -> str:
    total = max(int(s) for s in res["granted"].values())
    lines = record.heading("Split-tail (stream-K hybrid) matmul", res) + [
        f"Partitions: {res['partition_route']} green contexts, granted SMs {res['granted']}. "
        "Medians of CUDA-graph replays timed with events after warm-up, inputs rotated past L2. "
        "Generated by benchmarks/kernels/streamk.py and streamk_report.py.", ""]
    c = res.get("correctness")
    if c:
        lines += ["## Correctness", "", f"Relative L2 error against the float32 reference, fresh "
                  f"random inputs, NaN-poisoned output, worst of 3 launches: max "
                  f"{c.get('max', float('nan')):.2e} over {len(c) - 1} checks.", ""]
    if res["points"]:
        table, counts = _partitions(res, total)
        lines += ["## Partitions: ratio to proportional (target <= 1.10)", "", __doc__.split(
            "\n\n")[1].replace("\n", " "), ""] + table + [""]
        lines += [f"Within 1.10 against ref best: before {counts['before']}/{counts['n']}, after "
                  f"{counts['after']}/{counts['n']}, with the best config measured at each point "
                  f"{counts['oracle']}/{counts['n']}. Triton alone against ref Triton: before "
                  f"{counts['old_t']}/{counts['n']}, after {counts['now_t']}/{counts['n']}.", ""]
        lines += [f"## All {total} SMs", ""] + _all_sms(res, total) + [""]
    rep = repeats(res)
    if rep:
        lines += [f"Repeated timings of one launch in this run: {len(rep)} pairs, median spread "
                  f"{100 * (rep[len(rep) // 2] - 1):.1f}%, {sum(r > 1.1 for r in rep)} pairs apart "
                  f"by more than 10% (largest {rep[-1]:.2f}x); the tables use the lower of a pair.",
                  ""]
    if "zeros_fill_us" in res:
        lines += [f"Counter fill alone (graph of torch.zeros(256, int32)): "
                  f"{res['zeros_fill_us']:.2f} µs per call.", ""]
    if v1:
        lines += ["## First run: classic stream-K (abandoned)", "", classic.__doc__, ""] + \
            classic(v1, total) + [""]
    if res.get("errors"):
        lines += ["## Failed or skipped", ""] + [f"- {k}: {v.strip().splitlines()[-1]}"
                                                  for k, v in res["errors"].items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    docs = [json.load(open(path)) for path in sys.argv[1:3]]
    print(render(docs[0], docs[1] if len(docs) > 1 else None))
