"""Paged KV-cache kernels on the GPU: decode attention through block tables against the static
cache, and the varlen prefill attention against a per-prompt SDPA loop.

One device call: `PYTHONUNBUFFERED=1 python benchmarks/kernels/paged_attention.py --out $OUT`.

Sections (each guarded; each skipped once the time budget is spent):
- decode: Llama-3-8B decode attention (the Llama-3-8B rows of `sections.ATTN_SHAPES`) on the
  static cache and on block pools of 16 and 32 positions read through shuffled block tables,
  on 32- and 64-SM partitions and the whole GPU. Graph-timed (`CudaTimer`), so launches are
  not counted; the paged error against the static kernel's output is recorded.
- prefill: causal attention over 8-64 packed prompts of 100-1024 tokens (and 8 of 1024) at
  Llama-3-8B heads: `kernels.prefill_attention` (one launch) against SDPA prompt by prompt
  (GQA native, and with K/V repeated per query head), both graph-timed (GPU time) and eager
  (CUDA events around the Python call: what a prefill pays, launches included).
- prefill_configs: the prefill kernel's launch shapes on two of those workloads.
Writes paged_attention_<gpu>.json and .md under --out and prints the tables last. Measures
only: no target is asserted here.
"""

from __future__ import annotations

import itertools
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sections  # noqa: E402  (benchmarks/kernels/sections.py)
import record  # noqa: E402  (benchmarks/record.py, on the path through sections)

from pipedecode.runtime import kernels  # noqa: E402
from pipedecode.runtime.timing import time_us  # noqa: E402
from pipedecode.runtime.kernels._prefill_attention import GPU_DEFAULT, PrefillConfig  # noqa: E402

DECODE_SMS = (32, 64, 132)
BLOCK_SIZES = (16, 32)
HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128                   # Llama-3-8B
PREFILL_WORKLOADS = {"8 x U(100,1024)": (8, False), "16 x U(100,1024)": (16, False),
                     "32 x U(100,1024)": (32, False), "64 x U(100,1024)": (64, False),
                     "8 x 1024": (8, True)}


def _paged_copy(cache: torch.Tensor, block_size: int, order: torch.Tensor) -> torch.Tensor:
    """The static cache [batch, kv, ctx, dim] in a pool whose block order[i] + 1 holds the
    cache's i-th block (block 0 unused: the null block); tables are (order + 1).view(batch, -1)."""
    batch, kv_heads, ctx, dim = cache.shape
    per_seq = ctx // block_size
    pool = torch.empty(batch * per_seq + 1, kv_heads, block_size, dim, dtype=cache.dtype,
                       device=cache.device)
    blocks = cache.view(batch, kv_heads, per_seq, block_size, dim).transpose(1, 2)
    pool[order + 1] = blocks.reshape(batch * per_seq, kv_heads, block_size, dim)
    return pool


def decode(ctx):
    gen = torch.Generator().manual_seed(0)
    rows = []
    for label, (b, h, hkv, d, s, ragged) in sections.ATTN_SHAPES.items():
        if not label.startswith("llama3-8b") or time.time() > ctx.deadline:
            continue
        q, k, v, lens, out = sections._attn_inputs(b, h, hkv, d, s, ragged)
        kv_bytes = int(lens.sum().item()) * hkv * d * 2 * 2
        paged = {}
        for bs in BLOCK_SIZES:
            order = torch.randperm(b * (s // bs), generator=gen).to(k.device)
            tables = (order + 1).view(b, -1).to(torch.int32)
            paged[bs] = (_paged_copy(k, bs, order), _paged_copy(v, bs, order), tables)
        for sms in DECODE_SMS:
            granted = ctx.timer.granted_sms(sms)
            row = {"shape": label, "sms": granted, "kv_bytes": kv_bytes}
            static = lambda: kernels.decode_attention(q, k, v, lens, sm_count=granted, out=out,  # noqa: E731
                                                      max_context_len=s)
            row["static_us"] = ctx.timer.time_calls([static] * 4, sms)
            expected = static().float()
            for bs, (k_pool, v_pool, tables) in paged.items():
                o = torch.empty_like(out)
                call = (lambda kp=k_pool, vp=v_pool, t=tables, o=o: kernels.decode_attention(
                    q, kp, vp, lens, sm_count=granted, out=o, max_context_len=s, block_tables=t))
                row[f"paged{bs}_us"] = ctx.timer.time_calls([call] * 4, sms)
                row[f"paged{bs}_rel_err"] = sections._rel(call(), expected)
            rows.append(row)
            print(row, flush=True)
        del q, k, v, lens, out, paged
        torch.cuda.empty_cache()
    return {"block_sizes": list(BLOCK_SIZES), "rows": rows}


def _prefill_inputs(prompts: int, fixed: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = [1024] * prompts if fixed else torch.randint(100, 1025, (prompts,),
                                                           generator=gen).tolist()
    total = sum(lengths)
    q = sections._randn(total, HEADS, HEAD_DIM)
    k, v = sections._randn(total, KV_HEADS, HEAD_DIM), sections._randn(total, KV_HEADS, HEAD_DIM)
    bounds = [0] + list(itertools.accumulate(lengths))
    cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    return lengths, bounds, q, k, v, cu


def _sdpa_loop(q, k, v, bounds, out, repeat: bool):
    """Per prompt: SDPA on [heads, n, dim] views, GQA native or K/V repeated per query head."""
    group = HEADS // KV_HEADS

    def call():
        for a, b in zip(bounds[:-1], bounds[1:]):
            qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
            if repeat:
                ks, vs = ks.repeat_interleave(group, 0), vs.repeat_interleave(group, 0)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=not repeat)
            out[a:b].copy_(o.transpose(0, 1))
    return call


def _causal_flops(lengths) -> float:
    return sum(4.0 * n * (n + 1) / 2 * HEAD_DIM * HEADS for n in lengths)


def prefill(ctx):
    rows = []
    for label, (prompts, fixed) in PREFILL_WORKLOADS.items():
        if time.time() > ctx.deadline:
            break
        lengths, bounds, q, k, v, cu = _prefill_inputs(prompts, fixed)
        ours_out, sdpa_out = torch.empty_like(q), torch.empty_like(q)
        ours = lambda: kernels.prefill_attention(q, k, v, cu, max_seqlen=max(lengths),  # noqa: E731
                                                 out=ours_out)
        calls = {"ours": ours, "sdpa_gqa": _sdpa_loop(q, k, v, bounds, sdpa_out, False),
                 "sdpa_repeat": _sdpa_loop(q, k, v, bounds, sdpa_out, True)}
        row = {"workload": label, "prompts": prompts, "tokens": bounds[-1],
               "flops": _causal_flops(lengths)}
        for name, call in calls.items():
            row[f"{name}_graph_us"] = ctx.timer.time_calls([call], 132)
            torch.cuda.synchronize()
            row[f"{name}_eager_us"] = time_us(call, repeats=10)
        ours()
        _sdpa_loop(q, k, v, bounds, sdpa_out, False)()
        row["rel_err_vs_sdpa"] = sections._rel(ours_out, sdpa_out)
        rows.append(row)
        print(row, flush=True)
        del q, k, v, ours_out, sdpa_out
        torch.cuda.empty_cache()
    return {"default_config": vars(GPU_DEFAULT), "rows": rows}


def prefill_configs(ctx):
    configs = [PrefillConfig(block_m=bm, block_n=bn, num_warps=w, num_stages=st)
               for bm, bn, w, st in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4))
               if bm % bn == 0]
    rows = []
    for label in ("32 x U(100,1024)", "8 x 1024"):
        lengths, _, q, k, v, cu = _prefill_inputs(*PREFILL_WORKLOADS[label])
        out = torch.empty_like(q)
        times = []
        for cfg in configs:
            call = (lambda cfg=cfg: kernels.prefill_attention(q, k, v, cu, max_seqlen=max(lengths),
                                                               out=out, config=cfg))
            try:
                times.append(ctx.timer.time_calls([call], 132))
            except Exception as exc:  # noqa: BLE001 - a shape that does not fit keeps the rest
                times.append(None)
                print(cfg, "failed:", repr(exc)[:200], flush=True)
            if time.time() > ctx.deadline:
                break
        rows.append({"workload": label, "flops": _causal_flops(lengths), "us": times})
        print(label, min(t for t in times if t), flush=True)
        del q, k, v, out
        torch.cuda.empty_cache()
    return {"configs": [vars(c) for c in configs], "rows": rows}


def _decode_md(dec) -> list[str]:
    out = ["## Decode attention: static cache vs block pools (Llama-3-8B, bf16)", "",
           "Paged µs through shuffled block tables; TB/s = KV bytes / time; error against the "
           "static kernel's output.", "",
           "| shape | SMs | static µs | " + " | ".join(
               f"paged bs{bs} µs | bs{bs} / static" for bs in dec["block_sizes"]) +
           " | static TB/s | max rel err |",
           "|---|---|---|" + "---|---|" * len(dec["block_sizes"]) + "---|---|"]
    for r in dec["rows"]:
        cells = [f"{r[f'paged{bs}_us']:.1f} | {r[f'paged{bs}_us'] / r['static_us']:.3f}"
                 for bs in dec["block_sizes"]]
        err = max(r[f"paged{bs}_rel_err"] for bs in dec["block_sizes"])
        out.append(f"| {r['shape']} | {r['sms']} | {r['static_us']:.1f} | " + " | ".join(cells)
                   + f" | {r['kv_bytes'] / r['static_us'] / 1e6:.2f} | {err:.1e} |")
    return out + [""]


def _prefill_md(pre) -> list[str]:
    out = ["## Prefill attention: one varlen launch vs SDPA prompt by prompt (32/8 heads, bf16)",
           "", "graph = GPU time of a CUDA-graph replay; eager = the Python call timed with "
           "events (launches included). Speedup = SDPA (GQA) eager / ours eager.", "",
           "| workload | tokens | ours graph µs | ours TFLOP/s | SDPA gqa graph µs | "
           "SDPA repeat graph µs | ours eager µs | SDPA gqa eager µs | SDPA repeat eager µs | "
           "speedup | rel err |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in pre["rows"]:
        out.append(f"| {r['workload']} | {r['tokens']} | {r['ours_graph_us']:.0f} | "
                   f"{r['flops'] / r['ours_graph_us'] / 1e6:.0f} | {r['sdpa_gqa_graph_us']:.0f} | "
                   f"{r['sdpa_repeat_graph_us']:.0f} | {r['ours_eager_us']:.0f} | "
                   f"{r['sdpa_gqa_eager_us']:.0f} | {r['sdpa_repeat_eager_us']:.0f} | "
                   f"{r['sdpa_gqa_eager_us'] / r['ours_eager_us']:.2f} | "
                   f"{r['rel_err_vs_sdpa']:.1e} |")
    return out + [""]


def _configs_md(cfgs) -> list[str]:
    out = ["## Prefill attention launch shapes (best five per workload, graph µs)", "",
           "| workload | config | µs | TFLOP/s |", "|---|---|---|---|"]
    for r in cfgs["rows"]:
        ranked = sorted((t, i) for i, t in enumerate(r["us"]) if t)
        for t, i in ranked[:5]:
            c = cfgs["configs"][i]
            name = f"m{c['block_m']} n{c['block_n']} w{c['num_warps']} s{c['num_stages']}"
            out.append(f"| {r['workload']} | {name} | {t:.0f} | {r['flops'] / t / 1e6:.0f} |")
    return out + [""]


def markdown(res: dict) -> str:
    out = record.heading("Paged attention kernels", res) + [
        "Medians of CUDA-graph replays timed with events. Generated by "
        "benchmarks/kernels/paged_attention.py.", ""]
    for key, render in (("decode", _decode_md), ("prefill", _prefill_md),
                        ("prefill_configs", _configs_md)):
        if res.get(key):
            out += render(res[key])
    if res["errors"]:
        out += ["Errors: " + ", ".join(res["errors"]), ""]
    return "\n".join(out)


def main() -> int:
    names = ("decode", "prefill", "prefill_configs")
    return sections.run_benchmark("paged_attention", __doc__.splitlines()[0],
                                  {n: globals()[n] for n in names}, markdown, budget_s=450.0,
                                  reps=10)


if __name__ == "__main__":
    sys.exit(main())
