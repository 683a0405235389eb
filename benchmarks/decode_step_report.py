"""The decode-step benchmark's JSON as markdown, and several runs on one GPU as one result.

    python benchmarks/decode_step_report.py RESULT.json            # print the markdown
    python benchmarks/decode_step_report.py --merge A.json B.json [--merge-hf C.json] --out DIR

Owns the table (`markdown`) and merging (`merge_results`: per point, later files win; from the
--merge-hf files only the transformers columns). Knows nothing of how the numbers were measured;
no GPU needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import record  # noqa: E402  (benchmarks/record.py)
from decode_step_points import in_grid  # noqa: E402

BENCHMARK = "decode_step"
COLUMNS = ("| model | batch | context | HF eager | HF static+compile | pd sequential | "
           "pd planner | speedup | best split | max il speedup | predicted | pred. err | "
           "floor | floor/best |")


def _ms(row: dict, key: str) -> str:
    return f"{row[key] / 1000:.2f}" if row.get(key) is not None else "-"


def _intro(result: dict) -> str:
    return (
        f"Milliseconds per decode step (all layers, bf16, random weights), median of CUDA-event "
        f"timings of graph replays, every column of a point timed in 6 rounds, the order rotated "
        f"each round. planner = the executor running the planner's schedule for the "
        f"{result.get('profile', '?')} profile (mode in brackets; 'seq' means it chose "
        f"sequential; for 'il' the time shown includes the executor's guard, which times "
        f"interleaved against sequential at set-up and keeps the faster, and the unguarded time "
        f"follows); pred. err = planner predicted vs the unguarded measured time of its "
        f"schedule; best split = fastest measured interleaved run over memory partitions of "
        f"{result.get('splits')} SMs. floor = max(FLOPs / {result['peak_tflops']:.0f} TFLOP/s, "
        f"bytes / {result['hbm_tbs']:.2f} TB/s) of the step (pipedecode.counts, weights read "
        f"once); max il speedup = pd sequential / the floor of an interleaved step (2 "
        f"micro-batches, each reading the weights): the most interleaving could win here. "
        f"Kernels: {result.get('kernels', 'triton')}; (cuBLAS x) or (Triton x) after pd "
        f"sequential: the same step with that GEMM, where measured.")


def _row(r: dict) -> str:
    seq = r["sequential_us"]
    raw = r.get("planner_us", seq)
    chosen = r.get("planner_guard_us", raw)   # with the executor's measured fallback
    mode = {"interleaved": "il", "sequential": "seq"}.get(r.get("planner_mode"), "none")
    if "planner_guard_us" in r:
        mode += f", unguarded {raw / 1000:.2f}"
    label = "" if in_grid(r["model"], r["batch"], r["context"]) else " (extra)"
    split = r.get("interleaved_best_split_us")
    pred = r.get("planner_predicted_us")
    err = f"{(pred - raw) / raw:+.1%}" if pred else "-"
    best = min(seq, chosen, split or seq)
    il_floor = max(r["roofline_floor_us"], r.get("interleaved_floor_us") or 0.0)
    variants = "".join(f" ({name} {r[key] / 1000:.2f})" for name, key in
                       (("cuBLAS", "sequential_cublas_us"), ("Triton", "sequential_triton_us"))
                       if key in r)
    split_cell = (f"{split / 1000:.2f} ({r['interleaved_best_split']}, {seq / split:.3f}x)"
                  if split else "-")
    cells = [r["model"], r["batch"], f"{r['context']}{label}", _ms(r, "hf_eager_us"),
             _ms(r, "hf_compile_us"), f"{seq / 1000:.2f}{variants}",
             f"{chosen / 1000:.2f} ({mode})", f"{seq / chosen:.3f}", split_cell,
             f"{seq / il_floor:.2f}", _ms(r, "planner_predicted_us"), err,
             _ms(r, "roofline_floor_us"), f"{r['roofline_floor_us'] / best:.2f}"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(result: dict) -> str:
    lines = record.heading("Decode step", result) + [_intro(result), "", COLUMNS,
                                                      "|---" * 14 + "|"]
    for r in result["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['batch']} | {r['context']} | skipped: "
                         f"{r['skipped']} |" + " |" * 10)
        else:
            lines.append(_row(r))
    return "\n".join(lines) + "\n"


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
