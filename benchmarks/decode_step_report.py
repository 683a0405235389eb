"""The decode-step benchmark's JSON as markdown, and several runs on one GPU as one result.

    python benchmarks/decode_step_report.py RESULT.json            # print the markdown
    python benchmarks/decode_step_report.py --merge A.json B.json [--merge-hf C.json] --out DIR

Owns the table (`markdown`: the grid, the targets met or not from decode_step_targets.py, each
planner schedule's reason) and merging (`merge_results`: per point, later files win; from the
--merge-hf files only the transformers columns; the targets recomputed). Knows nothing of how
the numbers were measured; no GPU needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import record  # noqa: E402  (benchmarks/record.py)
from decode_step_points import in_grid  # noqa: E402
from decode_step_targets import lines as target_lines, targets, timed  # noqa: E402

BENCHMARK = "decode_step"
COLUMNS = ("| model | batch | context | HF eager | HF static+compile | pd sequential | "
           "seq / own floor | pd planner | speedup | planner unguarded | co-resident (planner's "
           "mbs) | best co-resident | best split | max overlap speedup | predicted | pred. err | "
           "floor | floor/best |")
MODES = {"interleaved": "il", "coresident": "co", "sequential": "seq"}


def _ms(row: dict, key: str) -> str:
    return f"{row[key] / 1000:.2f}" if row.get(key) is not None else "-"


def _intro(result: dict) -> str:
    return (
        f"Milliseconds per decode step (all layers, bf16, random weights), median of CUDA-event "
        f"timings of graph replays, every column of a point timed in 6 rounds, the order rotated "
        f"each round. pd planner = the executor running the planner's schedule for the "
        f"{result.get('profile', '?')} profile with the executor's guard, as a user gets it (the "
        f"guard times an overlapped graph against sequential at set-up and keeps the faster; the "
        f"mode it kept in brackets: il interleaved, co co-resident, seq sequential); planner "
        f"unguarded = the same schedule in its planned mode (in brackets); speedup = pd "
        f"sequential / pd planner; pred. err = planner predicted vs the unguarded time. "
        f"co-resident (planner's mbs) = the planner's micro-batches run co-resident (both "
        f"streams on every SM); best co-resident = the fastest of the co-resident runs over "
        f"attention budgets of {result.get('coresident_kib', '?')} KiB and balanced "
        f"micro-batches; best split = the fastest interleaved run over memory partitions of "
        f"{result.get('splits')} SMs. floor = max(FLOPs / {result['peak_tflops']:.0f} TFLOP/s, "
        f"bytes / {result['hbm_tbs']:.2f} TB/s) of the step (pipedecode.counts, weights read "
        f"once); seq / own floor = the sequential step's own floor (the sum over its ops of "
        f"max(FLOPs / peak, bytes / bandwidth)) / pd sequential; max overlap speedup = pd "
        f"sequential / the floor of a step of 2 micro-batches, each reading the weights: the "
        f"most overlapping could win here. Kernels: {result.get('kernels', 'triton')}; "
        f"(Triton attn x), (cuBLAS x) or (Triton x) after pd sequential: the same step with "
        f"that kernel, where measured.")


def _with_speedup(us: float | None, seq: float, label: str = "") -> str:
    if not us:
        return "-"
    return f"{us / 1000:.2f} ({label}{', ' if label else ''}{seq / us:.3f}x)"


def _row(r: dict) -> str:
    seq = r["sequential_us"]
    guarded, unguarded = timed(r)
    planned = MODES.get(r.get("planner_mode"), "none")
    kept = MODES.get(r.get("planner_guard_kept", r.get("planner_mode")), planned)
    label = "" if in_grid(r["model"], r["batch"], r["context"]) else " (extra)"
    split, co = r.get("interleaved_best_split_us"), r.get("coresident_best_us")
    pred = r.get("planner_predicted_us")
    err = f"{(pred - unguarded) / unguarded:+.1%}" if pred and unguarded else "-"
    best = min(x for x in (seq, guarded, split, co, r.get("coresident_planner_us")) if x)
    il_floor = max(r["roofline_floor_us"], r.get("interleaved_floor_us") or 0.0)
    variants = "".join(f" ({name} {r[key] / 1000:.2f})" for name, key in
                       (("Triton attn", "sequential_triton_attention_us"),
                        ("cuBLAS", "sequential_cublas_us"), ("Triton", "sequential_triton_us"))
                       if key in r)
    own = f"{r['op_floor_us'] / seq:.0%}" if r.get("op_floor_us") else "-"
    cells = [r["model"], r["batch"], f"{r['context']}{label}", _ms(r, "hf_eager_us"),
             _ms(r, "hf_compile_us"), f"{seq / 1000:.2f}{variants}", own,
             f"{guarded / 1000:.2f} ({kept})" if guarded else "-",
             f"{seq / guarded:.3f}" if guarded else "-",
             f"{unguarded / 1000:.2f} ({planned})" if unguarded else "-",
             _with_speedup(r.get("coresident_planner_us"), seq),
             _with_speedup(co, seq, r.get("coresident_best", "")),
             _with_speedup(split, seq, r.get("interleaved_best_split", "")),
             f"{seq / il_floor:.2f}", _ms(r, "planner_predicted_us"), err,
             _ms(r, "roofline_floor_us"), f"{r['roofline_floor_us'] / best:.2f}"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(result: dict) -> str:
    lines = record.heading("Decode step", result) + [_intro(result), "", COLUMNS,
                                                      "|---" * 18 + "|"]
    for r in result["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['batch']} | {r['context']} | skipped: "
                         f"{r['skipped']} |" + " |" * 14)
        else:
            lines.append(_row(r))
    reasons = [f"- {r['name']}: {r['planner_reason']}" for r in result["rows"]
               if r.get("planner_reason")]
    lines += [""] + target_lines(result)
    if reasons:
        lines += ["## Why the planner chose each mode", ""] + reasons + [""]
    return "\n".join(lines)


def merge_results(paths: list[str], hf_paths: list[str] = ()) -> dict:
    """One result from runs on one GPU: per point, later files' values win; from `hf_paths`
    only the transformers columns (hf_*) are taken, for points the main files measured."""
    merged: dict = {}
    result = None
    for path in list(hf_paths) + list(paths):
        hf_only = path in hf_paths and path not in paths
        with open(path) as fh:
            data = json.load(fh)
        if not hf_only:
            result = {k: v for k, v in data.items() if k != "rows"} if result is None else result
            result["splits"] = sorted(set(result.get("splits", [])) | set(data.get("splits", [])))
        for row in data["rows"]:
            key = (row["model"], row["batch"], str(row["context"]))
            entry = merged.setdefault(key, {"sources": []})
            entry.update({k: v for k, v in row.items() if k.startswith("hf_")} if hf_only
                         else row)
            entry["sources"].append(os.path.basename(path))
    if result is None:
        raise ValueError("merge_results needs at least one file of pipedecode measurements")
    result["rows"] = [r for r in merged.values() if "model" in r and "roofline_floor_us" in r
                      and ("sequential_us" in r or r.get("skipped"))]
    result["targets"] = targets(result["rows"])
    result["merged_from"] = [os.path.basename(p) for p in paths]
    result["hf_columns_from"] = [os.path.basename(p) for p in hf_paths]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", nargs="?", help="a decode_step JSON to print as markdown")
    parser.add_argument("--merge", nargs="+", default=None, help="result JSONs of one GPU")
    parser.add_argument("--merge-hf", nargs="+", default=[],
                        help="with --merge: take only the transformers columns from these")
    parser.add_argument("--out", default=record.RESULTS,
                        help="with --merge: folder for decode_step_<gpu>.json and .md")
    args = parser.parse_args(argv)
    if args.merge:
        result = merge_results(args.merge, args.merge_hf)
        print(record.write(args.out, BENCHMARK, result, markdown(result)) + ".{json,md}")
        return 0
    if not args.result:
        parser.error("give a result JSON, or --merge")
    with open(args.result) as fh:
        print(markdown(json.load(fh)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
