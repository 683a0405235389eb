"""Markdown tables from run_all.py's JSON: `python benchmarks/kernels/report.py kernels_h100.json`."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import record  # noqa: E402  (benchmarks/record.py)


def _f(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def _partitions(res):
    p = res.get("env_partitions")
    if not p:
        return []
    lines = ["## Partitions", "", f"support: {p['support']} ({p['route']}); cuda.bindings "
             f"{p.get('cuda_bindings')}; SM ids seen on the whole GPU: "
             f"{p.get('whole_gpu_distinct_sm_ids')}", "",
             "| request | route | granted (memory, compute) | granularity | distinct SM ids | shared SM ids |",
             "|---|---|---|---|---|---|"]
    for key in ("driver_66", "torch_48"):
        if key in p:
            r = p[key]
            lines.append(f"| {key} | {r['route']} | {r['granted']} | {r['granularity']} | "
                         f"{r['distinct_sm_ids']} | {r['shared_sm_ids']} |")
    return lines + [""]


def _correctness(res):
    c = res.get("correctness")
    if not c:
        return []
    lines = ["## Correctness (relative L2 error against the float32 reference, fresh random "
             "inputs, output poisoned with NaN first)", "", "| check | rel error |", "|---|---|"]
    lines += [f"| {k} | {v:.2e} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in c.items()]
    return lines + [""]


def _bandwidth(res):
    b = res.get("bandwidth")
    if not b:
        return []
    keys = [k for k in b if k != "copy_all"]
    return ["## Streaming read bandwidth per partition (TB/s)", "",
            "| SMs | " + " | ".join(str(k) for k in keys) + " | copy, all SMs (r+w) |",
            "|---" * (len(keys) + 2) + "|",
            "| TB/s | " + " | ".join(_f(b[k]) for k in keys) + f" | {_f(b.get('copy_all'))} |", ""]


def _attention(res):
    a = res.get("attention")
    if not a:
        return []
    lines = ["## Decode attention (config " + json.dumps(a["config"]) + ")", "",
             "ours TB/s = KV bytes actually needed / time; % = of the streaming read on the same "
             "partition; SDPA/ours > 1 means ours is faster. SDPA on the ragged row reads the "
             "padded cache (no per-request lengths).", "",
             "| shape | SMs | ours µs | ours TB/s | % of stream | SDPA µs | SDPA/ours | ours, 4 programs/SM µs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in a["rows"]:
        pct = None if r.get("of_stream") is None else 100 * r["of_stream"]
        lines.append(f"| {r['shape']} | {r['sms']} | {_f(r['ours_us'], 1)} | {_f(r['ours_tbs'])} "
                     f"| {_f(pct, 0)} | {_f(r['sdpa_us'], 1)} | {_f(r['sdpa_over_ours'])} | "
                     f"{_f(r.get('pps4_us'), 1)} |")
    return lines + [""]


def _linear(res):
    rows = (res.get("linear") or {}).get("rows")
    if not rows:
        return []
    sms = sorted(int(s) for s in rows[0]["ratio"])
    lines = ["## Linear layers: time on n SMs / (time on all SMs x all/n); target <= 1.10", "",
             "| shape | tokens | impl | µs on all | TFLOP/s on all | " +
             " | ".join(f"n={s}" for s in sms) + " |", "|---" * (5 + len(sms)) + "|"]
    for r in rows:
        ratio = {int(k): v for k, v in r["ratio"].items()}
        full = {int(k): v for k, v in r["us"].items()}[max(sms)]
        lines.append(f"| {r['shape']} ({r['n']}x{r['k']}) | {r['tokens']} | {r['impl']} | "
                     f"{_f(full, 1)} | {_f(r['tflops_full'], 0)} | " +
                     " | ".join(_f(ratio[s]) for s in sms) + " |")
    return lines + [""]


def _gate_up(res):
    rows = (res.get("gate_up") or {}).get("rows")
    if not rows:
        return []
    lines = ["## Fused gate/up + SiLU (Llama-3-8B, 2x14336 x 4096), µs", "",
             "| tokens | SMs | fused | auto | triton linear + torch silu*mul | cuBLAS + torch silu*mul |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['tokens']} | {r['sms']} | {_f(r['fused_us'], 1)} | {_f(r.get('auto_us'), 1)} | "
              f"{_f(r['triton_then_torch_us'], 1)} | {_f(r['cublas_then_torch_us'], 1)} |"
              for r in rows]
    return lines + [""]


def _sweep(res):
    rows = (res.get("linear_sweep") or {}).get("rows")
    if not rows:
        return []
    lines = ["## Tile chooser against the best of the sweep", "",
             "| n x k | tokens | SMs | chosen (bm,bn,split) | µs | best (bm,bn,split,programs/SM) | µs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        c, b = r["chosen"], r["best"]
        lines.append(f"| {r['n']}x{r['k']} | {r['tokens']} | {r['sms']} | "
                     f"{c['block_m']},{c['block_n']},{c['split_k']} | {_f(r['chosen_us'], 1)} | "
                     f"{b['block_m']},{b['block_n']},{b['split_k']},{b['programs_per_sm']} | "
                     f"{_f(r['best_us'], 1)} |")
    return lines + [""]


def render(res: dict) -> str:
    head = record.heading("Kernel benchmarks", res) + [
        "Times are medians of CUDA-graph replays timed with events, after warm-up. Generated by "
        "benchmarks/kernels/run_all.py.", ""]
    body = []
    for part in (_partitions, _correctness, _bandwidth, _attention, _linear, _gate_up, _sweep):
        body += part(res)
    errors = res.get("errors") or {}
    if errors:
        body += ["## Sections that failed or were skipped", ""] + \
                [f"- {k}: {v.strip().splitlines()[-1]}" for k, v in errors.items()] + [""]
    return "\n".join(head + body)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        print(render(json.load(fh)))
