"""The Hopper TMA decode attention against the Triton kernel and SDPA, per SM count, and beside
a persistent GEMM on every SM (co-residence).

One device call: `PYTHONUNBUFFERED=1 python benchmarks/kernels/attention_tma.py --out $OUT`
(about 4 minutes on an H200; `--quick`: about 1). Offline, without a GPU, with triton 3.6:
`python benchmarks/kernels/attention_tma.py --compile-only --out DIR` compiles every variant the
launch plan picks for sm_90 and reports registers, spills, shared memory and PTX instructions.

Sections (each guarded; skipped once --budget-s is spent):
- check: every TMA variant against the Triton kernel at each shape (relative error, bf16).
- attention: Llama-3-8B (32/8 heads, head_dim 128), batch x context of the decode grid, full
  contexts, on the whole GPU and on green-context partitions of 16-64 SMs. Variants: the Triton
  kernel, the TMA kernel unbudgeted and within 64 KiB (contiguous and paged with 16-key
  blocks) and with one program per SM (`ONE_CTA`), SDPA on the whole GPU. GB/s = K and V bytes
  read once / time.
- corun: Llama-3-8B MLP GEMMs (gate_up 28672x4096, down 4096x14336, 4 layers) at 512 and 1024
  tokens beside the attention of 512 requests x 1024 keys (4 layers): cuBLAS then the
  attention on one stream, against the persistent Triton matmul and the 64 KiB persistent
  attention (one CTA per SM) on two plain streams at once.
Times: CUDA-graph replays timed with events, warm-up, median (`profiles.measure.CudaTimer`);
inputs larger than L2, random. Targets (reported met or not): >= 120 GB/s per SM on 16-32
SMs, >= 4.6 TB/s on the whole GPU, never slower than the Triton kernel. Writes
attention_tma_<gpu>.json and .md under --out and prints the short table last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback

import torch

from pipedecode.runtime.kernels import _attention_tma as tma
from pipedecode.runtime.kernels import _attention_tma_plan as plan

SHAPES = ((64, 1024), (512, 512), (1024, 256), (1024, 512), (2048, 256), (768, 1024),
          (512, 2048))
QUICK_SHAPES = ((64, 1024), (512, 512), (512, 2048))
SMS = (16, 24, 32, 48, 64, 0)          # 0: the whole GPU
QUICK_SMS = (16, 32, 0)
HEADS, KV_HEADS, DIM, BLOCK = 32, 8, 128, 16
BUDGET = 64 * 1024
TARGET_PER_SM_GBS, TARGET_WHOLE_TBS = 120.0, 4.6


def _randn(*shape, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(torch.bfloat16)


def _paged(k, v, gen_seed: int):
    """The same keys as shuffled 16-key blocks (block 0 the null block) and their tables."""
    batch, heads, ctx, dim = k.shape
    per = ctx // BLOCK
    perm = torch.randperm(batch * per, generator=torch.Generator().manual_seed(gen_seed)) + 1
    perm = perm.cuda()
    tables = perm.view(batch, per).to(torch.int32)
    kp = torch.empty((batch * per + 1, heads, BLOCK, dim), device="cuda", dtype=k.dtype)
    vp = torch.empty_like(kp)
    kp[0], vp[0] = _randn(heads, BLOCK, dim), _randn(heads, BLOCK, dim)
    for src, dst in ((k, kp), (v, vp)):
        dst[perm] = src.view(batch, heads, per, BLOCK, dim).transpose(1, 2).reshape(
            batch * per, heads, BLOCK, dim)
    return kp, vp, tables


class Shape:
    """Inputs of one (batch, context) point, contiguous and paged."""

    def __init__(self, batch: int, ctx: int):
        self.batch, self.ctx = batch, ctx
        self.q = _randn(batch, HEADS, DIM)
        self.k, self.v = _randn(batch, KV_HEADS, ctx, DIM), _randn(batch, KV_HEADS, ctx, DIM)
        self.lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        self.out = torch.empty_like(self.q)
        self.kp, self.vp, self.tables = _paged(self.k, self.v, batch + ctx)
        self.kv_bytes = 2 * batch * KV_HEADS * ctx * DIM * self.k.element_size()

    def call(self, variant: str, sms: int):
        from pipedecode.runtime import kernels

        q, o, lens, ctx = self.q, self.out, self.lens, self.ctx
        if variant == "triton":
            return lambda: kernels.decode_attention(q, self.k, self.v, lens, sm_count=sms, out=o,
                                                    max_context_len=ctx)
        if variant == "sdpa":
            qs = q.view(self.batch, KV_HEADS, HEADS // KV_HEADS, DIM)   # the group as rows
            return lambda: torch.nn.functional.scaled_dot_product_attention(qs, self.k, self.v)
        paged = "paged" in variant
        kc, vc = (self.kp, self.vp) if paged else (self.k, self.v)
        kw = {"block_tables": self.tables if paged else None, "sm_count": sms,
              "smem_budget_bytes": BUDGET if variant.endswith("64k") else None,
              "max_context_len": ctx, "config": ONE_CTA if variant == "tma_1cta" else None}
        return lambda: tma.decode_attention_tma(q, kc, vc, lens, out=o, **kw)


TMA_VARIANTS = ("tma", "tma_64k", "tma_paged", "tma_paged_64k", "tma_1cta")
# one program per SM with a 12-slot ring (192 KiB): the default's alternative if two programs of
# 103 KiB do not share an SM (the driver picks the shared-memory carveout)
ONE_CTA = plan.TmaAttentionConfig(ctas_per_sm=1, num_slots=12)


def check(ctx, shape: Shape) -> dict:
    """Relative error of every TMA variant against the Triton kernel (whole GPU), and the
    launch plan each takes; a first launch of each under the hang guard."""
    total = ctx.timer.total
    shape.call("triton", total)()
    expected = shape.out.clone()
    row = {}
    for variant in TMA_VARIANTS:
        shape.out.fill_(float("nan"))
        shape.call(variant, total)()
        tma.wait_or_exit(f"{variant} {shape.batch}x{shape.ctx}")
        a, e = shape.out.double(), expected.double()
        row[variant] = float("inf") if not torch.isfinite(a).all() else \
            ((a - e).norm() / e.norm()).item()
    return row


def attention(ctx, shapes, sms_list) -> list:
    rows = []
    for batch, c in shapes:
        if time.time() > ctx.deadline:
            ctx.results["errors"][f"attention {batch}x{c}"] = "skipped: time budget spent"
            continue
        shape = Shape(batch, c)
        ctx.results.setdefault("check", {})[f"{batch}x{c}"] = check(ctx, shape)
        geom = plan.CacheGeometry(batch, HEADS, KV_HEADS, DIM, c)
        for sms in sms_list:
            granted = ctx.timer.granted_sms(sms or ctx.timer.total)
            row = {"batch": batch, "ctx": c, "sms": granted, "kv_bytes": shape.kv_bytes, "us": {}}
            for variant in ("triton",) + TMA_VARIANTS + (("sdpa",) if not sms else ()):
                try:
                    row["us"][variant] = ctx.timer.time_calls([shape.call(variant, granted)],
                                                              granted)
                except Exception as exc:  # noqa: BLE001 - one variant failing keeps the others
                    row["us"][variant] = None
                    ctx.results["errors"][f"{variant} {batch}x{c} {granted}"] = repr(exc)[:400]
            p = plan.plan_launch(geom, plan.choose_config(geom), granted)
            row["tma_plan"] = {"splits": p.num_splits, "ctas": p.num_ctas, "slots": p.num_slots}
            rows.append(row)
            print(_row_line(row), flush=True)
        del shape
        torch.cuda.empty_cache()
    return rows


def _gbs(row, variant):
    us = row["us"].get(variant)
    return row["kv_bytes"] / (us * 1e-6) / 1e9 if us else None


def _row_line(row) -> str:
    parts = [f"{row['batch']}x{row['ctx']} {row['sms']:3d} SMs"]
    for variant, us in row["us"].items():
        if us:
            parts.append(f"{variant} {us:8.1f} us {_gbs(row, variant):6.0f} GB/s")
    return " | ".join(parts)


def corun(ctx, token_counts) -> list:
    """MLP GEMMs of 4 layers beside 4 layers of attention (512 requests x 1024 keys)."""
    from pipedecode.runtime import kernels

    layers, batch, c = 4, 512, 1024
    weights = [(_randn(28672, 4096, scale=0.02), _randn(4096, 14336, scale=0.02))
               for _ in range(layers)]
    q = _randn(batch, HEADS, DIM)
    kv = [(_randn(batch, KV_HEADS, c, DIM), _randn(batch, KV_HEADS, c, DIM))
          for _ in range(layers)]
    lens = torch.full((batch,), c, dtype=torch.int32, device="cuda")
    o = torch.empty_like(q)
    total = ctx.timer.total
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    rows = []
    for tokens in token_counts:
        if time.time() > ctx.deadline:
            ctx.results["errors"][f"corun {tokens}"] = "skipped: time budget spent"
            continue
        x, h, y = _randn(tokens, 4096), _randn(tokens, 28672), _randn(tokens, 4096)

        def gemms(impl):
            calls = []
            for wg, wd in weights:
                if impl == "cublas":
                    calls += [lambda wg=wg: torch.matmul(x, wg.t(), out=h),
                              lambda wd=wd: torch.matmul(h[:, :14336], wd.t(), out=y)]
                else:
                    calls += [lambda wg=wg: kernels.linear(x, wg, out=h, impl="triton",
                                                           sm_count=total),
                              lambda wd=wd: kernels.linear(h[:, :14336], wd, out=y,
                                                           impl="triton", sm_count=total)]
            return calls

        def attn(budget):
            return [lambda k=k, v=v: tma.decode_attention_tma(q, k, v, lens, out=o,
                                                             smem_budget_bytes=budget)
                    for k, v in kv]

        graphs = {"cublas": (gemms("cublas"), s1), "triton_gemm": (gemms("triton"), s1),
                  "attn": (attn(None), s2), "attn_64k": (attn(BUDGET), s2)}
        g = {name: ctx.timer.graph(calls, stream) for name, (calls, stream) in graphs.items()}
        seq = ctx.timer.graph(gemms("cublas") + attn(None), s1)
        row = {"tokens": tokens, "attn_requests": batch, "attn_ctx": c, "layers": layers,
               "alone_us": {name: ctx.timer.replay_us([(g[name], graphs[name][1])], 1)
                            for name in g},
               "sequential_cublas_then_attn_us": ctx.timer.replay_us([(seq, s1)], 1),
               "coresident_triton_gemm_attn_64k_us": ctx.timer.replay_us(
                   [(g["triton_gemm"], s1), (g["attn_64k"], s2)], 1),
               "two_streams_cublas_attn_64k_us": ctx.timer.replay_us(
                   [(g["cublas"], s1), (g["attn_64k"], s2)], 1)}
        row["speedup_coresident"] = (row["sequential_cublas_then_attn_us"]
                                     / row["coresident_triton_gemm_attn_64k_us"])
        rows.append(row)
        print(json.dumps(row), flush=True)
        del g, seq
    return rows


def targets(rows, variant: str = "tma") -> dict:
    """Each target for one TMA variant, with the numbers behind it and whether it is met."""
    small = [(r, _gbs(r, variant) / r["sms"]) for r in rows if r["sms"] <= 32 and _gbs(r, variant)]
    whole = [(r, _gbs(r, variant) / 1e3) for r in rows if r["sms"] > 64 and _gbs(r, variant)]
    ratios = [(r, r["us"][variant] / r["us"]["triton"]) for r in rows
              if r["us"].get("triton") and r["us"].get(variant)]
    out = {}
    if small:
        worst = min(small, key=lambda t: t[1])
        out["per_sm_gbs_16_32_sms"] = {"target": TARGET_PER_SM_GBS, "worst": worst[1],
                                       "worst_at": _where(worst[0]),
                                       "best": max(s[1] for s in small),
                                       "met": worst[1] >= TARGET_PER_SM_GBS}
    if whole:
        best = max(whole, key=lambda t: t[1])
        worst = min(w[1] for w in whole)
        out["whole_gpu_tbs"] = {"target": TARGET_WHOLE_TBS, "best": best[1],
                                "best_at": _where(best[0]), "worst": worst,
                                "met": best[1] >= TARGET_WHOLE_TBS,
                                "met_at_every_shape": worst >= TARGET_WHOLE_TBS}
    if ratios:
        worst = max(ratios, key=lambda t: t[1])
        out["never_slower_than_triton"] = {"worst_time_ratio": worst[1],
                                           "worst_at": _where(worst[0]),
                                           "slower_points": sum(r > 1.0 for _, r in ratios),
                                           "points": len(ratios), "met": worst[1] <= 1.0}
    return out


def _where(row) -> str:
    return f"{row['batch']}x{row['ctx']} on {row['sms']} SMs"


def markdown(res) -> str:
    out = [f"# TMA decode attention: {res['gpu']}, {res['date']}", "",
           f"Commit {res['commit']}; torch {res['torch']}, triton {res['triton']}. Llama-3-8B "
           f"(32/8 heads, head_dim 128), full contexts. GB/s = K and V bytes / time; medians of "
           f"CUDA-graph replays. Generated by benchmarks/kernels/attention_tma.py.", ""]
    rows = res.get("attention") or []
    if rows:
        names = ("triton",) + TMA_VARIANTS
        out += ["## Decode attention, µs (GB/s per SM for tma)", "",
                "| batch x ctx | SMs | " + " | ".join(names) + " | sdpa | tma GB/s | tma GB/s/SM "
                "| tma / triton |", "|---|---|" + "---|" * (len(names) + 4)]
        for r in rows:
            us = [r["us"].get(n) for n in names] + [r["us"].get("sdpa")]
            gbs = _gbs(r, "tma")
            ratio = r["us"]["tma"] / r["us"]["triton"] if r["us"].get("tma") and \
                r["us"].get("triton") else None
            out.append(f"| {r['batch']}x{r['ctx']} | {r['sms']} | " + " | ".join(
                "-" if u is None else f"{u:.1f}" for u in us) + " | " + " | ".join(
                "-" if x is None else f"{x:.{d}f}" for x, d in
                ((gbs, 0), (gbs / r["sms"] if gbs else None, 1), (ratio, 2))) + " |")
        out.append("")
    if res.get("check"):
        out += ["## Check: relative error against the Triton kernel (whole GPU)", "",
                "| batch x ctx | " + " | ".join(TMA_VARIANTS) + " |",
                "|---|" + "---|" * len(TMA_VARIANTS)]
        for key, errs in res["check"].items():
            out.append(f"| {key} | " + " | ".join(f"{errs[v]:.1e}" for v in TMA_VARIANTS) + " |")
        out.append("")
    if res.get("corun"):
        out += ["## Co-residence: MLP GEMMs beside attention (512 x 1024), 4 layers each, µs",
                "", "| tokens | cuBLAS then attention | Triton GEMM + attention 64 KiB, two "
                "streams | speed-up | cuBLAS + attention 64 KiB, two streams | cuBLAS alone | "
                "Triton GEMM alone | attention alone | attention 64 KiB alone |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in res["corun"]:
            a = r["alone_us"]
            out.append(f"| {r['tokens']} | {r['sequential_cublas_then_attn_us']:.0f} | "
                       f"{r['coresident_triton_gemm_attn_64k_us']:.0f} | "
                       f"{r['speedup_coresident']:.3f} | {r['two_streams_cublas_attn_64k_us']:.0f}"
                       f" | {a['cublas']:.0f} | {a['triton_gemm']:.0f} | {a['attn']:.0f} | "
                       f"{a['attn_64k']:.0f} |")
        out.append("")
    out += ["## Targets (the default launch: two programs per SM)", ""]
    out += [f"- {k}: {json.dumps(v)}" for k, v in res["targets"].items()]
    out += ["", "One program per SM (`ONE_CTA`), for comparison:", ""]
    out += [f"- {k}: {json.dumps(v)}" for k, v in res.get("targets_one_cta", {}).items()]
    if res["errors"]:
        out += ["", "Errors: " + json.dumps(res["errors"])[:3000]]
    return "\n".join(out) + "\n"


def short_table(res) -> str:
    lines = ["shape        SMs  triton_us   tma_us  tma_GB/s/SM  tma_64k_us  paged_us  1cta_us"]
    for r in res.get("attention") or []:
        u = r["us"]
        gbs = _gbs(r, "tma")
        lines.append(f"{r['batch']:>5}x{r['ctx']:<5} {r['sms']:>4} {u.get('triton') or 0:>10.1f} "
                     f"{u.get('tma') or 0:>8.1f} {(gbs or 0) / r['sms']:>12.1f} "
                     f"{u.get('tma_64k') or 0:>11.1f} {u.get('tma_paged') or 0:>9.1f} "
                     f"{u.get('tma_1cta') or 0:>8.1f}")
    for r in res.get("corun") or []:
        seq, co = r["sequential_cublas_then_attn_us"], r["coresident_triton_gemm_attn_64k_us"]
        lines.append(f"corun {r['tokens']} tokens: sequential {seq:.0f} us, co-resident "
                     f"{co:.0f} us ({r['speedup_coresident']:.3f}x)")
    for key in ("targets", "targets_one_cta"):
        for name, t in res.get(key, {}).items():
            lines.append(f"{key} {name}: {'MET' if t['met'] else 'NOT MET'} {json.dumps(t)}")
    return "\n".join(lines)


# name: (heads, kv_heads, head_dim, block_size, smem budget, many splits, context_starts)
COMPILE_VARIANTS = {
    "gqa4 d128 contiguous": (32, 8, 128, 0, None, True, False),
    "gqa4 d128 contiguous single": (32, 8, 128, 0, None, False, False),
    "gqa4 d128 contiguous starts": (32, 8, 128, 0, None, True, True),
    "gqa4 d128 contiguous 64k": (32, 8, 128, 0, BUDGET, True, False),
    "gqa4 d128 paged16": (32, 8, 128, 16, None, True, False),
    "gqa4 d128 contiguous 1cta": (32, 8, 128, 0, "1cta", True, False),
    "gqa4 d128 paged16 64k": (32, 8, 128, 16, BUDGET, True, False),
    "gqa4 d128 paged32 64k": (32, 8, 128, 32, BUDGET, False, False),
    "mha d128 contiguous": (8, 8, 128, 0, None, True, False),
    "mha d128 paged16 64k": (8, 8, 128, 16, BUDGET, True, False),
    "gqa4 d64 contiguous": (32, 8, 64, 0, None, True, False),
    "gqa4 d64 paged16 64k": (32, 8, 64, 16, BUDGET, True, False),
    "gqa8 d128 contiguous": (64, 8, 128, 0, None, True, False),
    "gqa16 d128 contiguous": (128, 8, 128, 0, None, True, False),
    "gqa32 d128 contiguous": (256, 8, 128, 0, None, True, False),
    "gqa16 d128 contiguous 64k": (128, 8, 128, 0, BUDGET, True, False),
    "gqa32 d128 paged16 64k": (256, 8, 128, 16, BUDGET, True, True),
}


def compile_one(heads, kv_heads, dim, block_size, budget, split, starts) -> dict:
    """Compile the kernel for sm_90 without a GPU (triton 3.6's Gluon) as the launch plan
    would launch it, and read ptxas's report and the PTX."""
    import re
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    geom = plan.CacheGeometry(1 if split else 512, heads, kv_heads, dim, 4096, block_size)
    cfg = ONE_CTA if budget == "1cta" else plan.choose_config(geom, budget)
    p = plan.plan_launch(geom, cfg, 132)
    cache = torch.empty(64, kv_heads, 16, dim, dtype=torch.bfloat16)
    desc = mangle_type(tma._descriptor(cache, p.box_rows))
    types = {"q_ptr": "*bf16", "o_ptr": "*bf16", "k_desc": desc, "v_desc": desc,
             "lens_ptr": "*i32", "starts_ptr": "*i32", "tables_ptr": "*i32", "po_ptr": "*fp32",
             "plse_ptr": "*fp32", "qk_scale": "fp32"}
    constexprs = tma.kernel_constexprs(geom, p, starts)
    sig = {n: "constexpr" if n in constexprs else types.get(n, "i32")
           for n in tma._decode_kernel.arg_names}
    ck = triton.compile(GluonASTSource(tma._decode_kernel, sig, constexprs=constexprs),
                        target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": plan.CONSUMER_WARPS, "maxnreg": p.maxnreg})
    ptx = ck.asm["ptx"]
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        report = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", src, "-o",
                                 os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    text = report.stderr
    number = lambda pattern: int((re.search(pattern, text) or [0, -1])[1])  # noqa: E731
    row = {"plan": {"block_n": p.block_n, "slots": p.num_slots, "box_rows": p.box_rows,
                    "splits": p.num_splits, "maxnreg": p.maxnreg},
           "planned_smem": p.smem_bytes, "shared": ck.metadata.shared,
           "registers": number(r"Used (\d+) registers"),
           "spill_bytes": number(r"(\d+) bytes spill stores") + number(r"(\d+) bytes spill loads"),
           "stack_bytes": number(r"(\d+) bytes stack frame"),
           "setmaxnreg": sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)",
                                               ptx))),
           "ptx": {name: len(re.findall(re.escape(name), ptx)) for name in (
               "cp.async.bulk.tensor.2d", "mbarrier.arrive.expect_tx", "mbarrier.try_wait",
               "wgmma.mma_async", "stmatrix", "ld.local", "st.local", "bar.sync")}}
    row["ok"] = (row["shared"] <= row["planned_smem"] and row["spill_bytes"] == 0
                 and row["stack_bytes"] == 0 and row["ptx"]["cp.async.bulk.tensor.2d"] > 0
                 and row["ptx"]["wgmma.mma_async"] > 0 and report.returncode == 0)
    return row


def compile_only(out_dir: str) -> int:
    rows = {}
    for name, spec in COMPILE_VARIANTS.items():
        try:
            rows[name] = compile_one(*spec)
        except Exception:  # noqa: BLE001 - report every variant
            rows[name] = {"ok": False, "error": traceback.format_exc()[-2000:]}
        r = rows[name]
        print(f"{name:32s} " + (json.dumps(r["error"]) if "error" in r else
              f"regs {r['registers']} spill {r['spill_bytes']} shared {r['shared']} "
              f"(planned {r['planned_smem']}) {r['plan']} {r['ptx']} {r['setmaxnreg']}")
              + ("" if r["ok"] else "  <-- FAIL"), flush=True)
    import triton

    with open(os.path.join(out_dir, "attention_tma_compile_sm90.json"), "w") as fh:
        json.dump({"triton": triton.__version__, "variants": rows}, fh, indent=1)
    return 0 if all(r["ok"] for r in rows.values()) else 1


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--quick", action="store_true", help="a 1-minute subset")
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--commit", default=None, help="the commit measured (default: git)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.compile_only:
        return compile_only(args.out)
    t0 = time.time()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sections  # noqa: E402  (benchmarks/kernels/sections.py)
    import triton

    from pipedecode.profiles.registry import gpu_key as device_name
    from pipedecode.runtime.profile_gpu import CudaTimer

    res = {"gpu": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
           "commit": args.commit or _commit(), "torch": torch.__version__,
           "triton": triton.__version__, "quick": args.quick, "errors": {}}
    budget = args.budget_s or (60.0 if args.quick else 230.0)
    ctx = sections.Context(timer=CudaTimer(reps=7 if args.quick else 10, warmup=2),
                           results=res, F=torch.nn.functional, deadline=t0 + budget)
    shapes, sms = (QUICK_SHAPES, QUICK_SMS) if args.quick else (SHAPES, SMS)
    functions = {"attention": lambda c: attention(c, shapes, sms),
                 "corun": lambda c: corun(c, (512,) if args.quick else (512, 1024))}
    gpu = device_name(res["gpu"])
    json_path = os.path.join(args.out, f"attention_tma_{gpu}.json")
    sections.run_sections(ctx, list(functions), functions, json_path)
    res["targets"] = targets(res.get("attention") or [])
    res["targets_one_cta"] = targets(res.get("attention") or [], "tma_1cta")
    res["wall_s"] = time.time() - t0
    with open(json_path, "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    text = markdown(res)
    with open(os.path.join(args.out, f"attention_tma_{gpu}.md"), "w") as fh:
        fh.write(text)
    print(text)
    print(short_table(res))
    print(f"total {res['wall_s']:.0f} s; errors in: {list(res['errors'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
