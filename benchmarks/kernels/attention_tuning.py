"""Can decode attention beat its partition's streaming probe, and SDPA on the whole GPU?

One device call: `PYTHONUNBUFFERED=1 python benchmarks/kernels/attention_tuning.py --out $OUT`.

Sections (each guarded; each skipped once the time budget is spent):
- stream_depth: bytes in flight per SM. The plain probe (`stream_read`: grid-stride loads, no
  pipelining) against tiled loads pipelined by Triton (cp.async, `num_stages`) and TMA bulk
  loads (a host tensor descriptor), on partitions of 16, 32, 64 SMs and the whole GPU.
- attention_configs: the decode attention's launch shape (block_n, num_stages,
  programs_per_sm, fused combine) at the shapes of `run_all.py`'s attention table, on 32 SMs
  and the whole GPU, against SDPA on the whole GPU.
- norm_share: RMSNorm against one layer's linear layers at decode token counts (does fusing
  the norm into the next GEMM pay?).
Writes attention_tuning_<gpu>.json and .md under --out and prints the tables last.
"""

from __future__ import annotations

import itertools
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sections  # noqa: E402  (benchmarks/kernels/sections.py)
from sections import record  # noqa: E402  (benchmarks/record.py)

from pipedecode.runtime import kernels  # noqa: E402
from pipedecode.runtime.kernels._attention import AttentionConfig  # noqa: E402

DEPTH_SMS = (16, 32, 64, 132)
ATTN_SMS = (32, 132)
ROW = 128                                   # bf16 elements per row: one head_dim row of K or V


@triton.jit
def _tile_sum(x_ptr, out_ptr, rows, BR: tl.constexpr, STAGES: tl.constexpr):
    pid, programs = tl.program_id(0), tl.num_programs(0)
    cols = tl.arange(0, 128)
    acc = tl.zeros([128], tl.float32)
    for blk in tl.range(pid, tl.cdiv(rows, BR), programs, num_stages=STAGES):
        r = blk * BR + tl.arange(0, BR)
        x = tl.load(x_ptr + r[:, None] * 128 + cols[None, :], mask=(r < rows)[:, None], other=0.0)
        acc += tl.sum(x.to(tl.float32), 0)
    tl.store(out_ptr + pid * 128 + cols, acc)


@triton.jit
def _tma_sum(desc, out_ptr, rows, BR: tl.constexpr, STAGES: tl.constexpr):
    pid, programs = tl.program_id(0), tl.num_programs(0)
    cols = tl.arange(0, 128)
    acc = tl.zeros([128], tl.float32)
    for blk in tl.range(pid, tl.cdiv(rows, BR), programs, num_stages=STAGES):
        acc += tl.sum(desc.load([blk * BR, 0]).to(tl.float32), 0)
    tl.store(out_ptr + pid * 128 + cols, acc)


def stream_depth(ctx):
    from triton.tools.tensor_descriptor import TensorDescriptor

    from pipedecode.runtime.kernels._elementwise import stream_read

    x = torch.randn(2 ** 29 // ROW, ROW, device="cuda").to(torch.bfloat16)     # 1 GiB
    rows, nbytes = x.shape[0], x.numel() * 2
    out = torch.empty(132 * 8 * ROW, device="cuda", dtype=torch.float32)
    variants = {"plain (stream_read)": lambda sms: lambda: stream_read(x.view(-1), sms, out)}
    for br, stages, pps in itertools.product((64, 128), (1, 3, 5), (1, 2, 4)):
        if br * ROW * 2 * stages * pps > 200 * 1024:
            continue
        variants[f"tiled br{br} st{stages} pps{pps}"] = (
            lambda sms, br=br, st=stages, pps=pps: lambda: _tile_sum[(sms * pps,)](
                x, out, rows, BR=br, STAGES=st, num_warps=4))
    for br, stages, pps in itertools.product((64, 128, 256), (2, 4), (1, 2)):
        if br * ROW * 2 * stages * pps > 200 * 1024:
            continue
        desc = TensorDescriptor.from_tensor(x, [br, ROW])
        variants[f"tma br{br} st{stages} pps{pps}"] = (
            lambda sms, d=desc, br=br, st=stages, pps=pps: lambda: _tma_sum[(sms * pps,)](
                d, out, rows, BR=br, STAGES=st, num_warps=4))
    rows_out = []
    for name, make in variants.items():
        row = {"variant": name}
        for sms in DEPTH_SMS:
            granted = ctx.timer.granted_sms(sms)
            try:
                us = ctx.timer.time_calls([make(granted)] * 2, sms)
                row[str(granted)] = nbytes / (us * 1e-6) / 1e12
            except Exception as exc:  # noqa: BLE001 - one variant failing keeps the others
                row[str(granted)] = None
                row["error"] = repr(exc)[:300]
        rows_out.append(row)
        print(name, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                     if k != "variant"}, flush=True)
        if time.time() > ctx.deadline:
            break
    return {"bytes": nbytes, "rows": rows_out}


def attention_configs(ctx):
    configs = [AttentionConfig(block_n=bn, num_stages=st, programs_per_sm=pps, fused_combine=fu)
               for bn, st, pps, fu in itertools.product((64, 128), (2, 3), (2, 4, 8),
                                                        (False, True))]
    rows = []
    for label, (b, h, hkv, d, s, ragged) in sections.ATTN_SHAPES.items():
        q, k, v, lens, o = sections._attn_inputs(b, h, hkv, d, s, ragged)
        locks = torch.zeros(b * hkv, device="cuda", dtype=torch.int32)
        kv_bytes = int(lens.sum().item()) * hkv * d * 2 * 2
        qs = q.view(b, hkv, h // hkv, d)
        sdpa_us = ctx.timer.time_calls([lambda: F.scaled_dot_product_attention(qs, k, v)] * 4, 132)
        for sms in ATTN_SMS:
            granted = ctx.timer.granted_sms(sms)
            times = []
            for cfg in configs:
                call = (lambda cfg=cfg: kernels.decode_attention(
                    q, k, v, lens, sm_count=granted, out=o, max_context_len=s, config=cfg,
                    locks=locks))
                times.append(ctx.timer.time_calls([call] * 4, sms))
            default = times[configs.index(AttentionConfig())] if AttentionConfig() in configs \
                else None
            rows.append({"shape": label, "sms": granted, "kv_bytes": kv_bytes, "us": times,
                         "default_us": default, "sdpa_132_us": sdpa_us})
            print(label, granted, "best", min(times), "default", default, "sdpa", sdpa_us,
                  flush=True)
        del q, k, v, lens, o, qs
        torch.cuda.empty_cache()
        if time.time() > ctx.deadline:
            break
    return {"configs": [vars(c) for c in configs], "rows": rows}


def norm_share(ctx):
    from pipedecode.models import model_shape

    shape = model_shape("llama-3-8b")
    hid, inter = shape.hidden_size, shape.intermediate_size
    qkv = (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    rows = []
    for tokens in (64, 256, 512, 1024):
        x = sections._randn(tokens, hid)
        nw = sections._randn(hid)
        ws = {"qkv": sections._randn(qkv, hid), "o": sections._randn(hid, hid),
              "gate_up": sections._randn(2 * inter, hid), "down": sections._randn(hid, inter)}
        xi = sections._randn(tokens, inter)
        norm_us = ctx.timer.time_calls([lambda: kernels.rms_norm(x, nw, 1e-5)] * 8, 132)
        lin = {}
        for name, w in ws.items():
            inp = xi if name == "down" else x
            lin[name] = ctx.timer.time_calls([lambda inp=inp, w=w: kernels.linear(inp, w)] * 4, 132)
        layer = sum(lin.values())
        rows.append({"tokens": tokens, "rms_norm_us": norm_us, "linear_us": lin,
                     "two_norms_over_linears": 2 * norm_us / layer})
        print(rows[-1], flush=True)
    return {"rows": rows}


def markdown(res: dict) -> str:
    out = record.heading("Attention tuning", res) + [
        "Medians of CUDA-graph replays timed with events. Generated by "
        "benchmarks/kernels/attention_tuning.py.", ""]
    depth = res.get("stream_depth")
    if depth:
        sms = [k for k in depth["rows"][0] if k not in ("variant", "error")]
        out += ["## Streaming read, TB/s, by SM count (1 GiB, bf16 rows of 128)", "",
                "| variant | " + " | ".join(sms) + " |", "|---|" + "---|" * len(sms)]
        for row in depth["rows"]:
            out.append(f"| {row['variant']} | " + " | ".join(
                "-" if row.get(k) is None else f"{row[k]:.2f}" for k in sms) + " |")
        out.append("")
    att = res.get("attention_configs")
    if att:
        cfgs = att["configs"]
        out += ["## Decode attention: best launch shape per shape and SM count", "",
                "TB/s = KV bytes / time. SDPA on 132 SMs reads the padded cache on the ragged row.",
                "", "| shape | SMs | default µs | best µs | best TB/s | best config | "
                "SDPA 132 µs | SDPA / best |", "|---|---|---|---|---|---|---|---|"]
        for row in att["rows"]:
            i = min(range(len(row["us"])), key=row["us"].__getitem__)
            c = cfgs[i]
            name = (f"bn{c['block_n']} st{c['num_stages']} pps{c['programs_per_sm']}"
                    + (" fused" if c["fused_combine"] else ""))
            best = row["us"][i]
            out.append(f"| {row['shape']} | {row['sms']} | "
                       f"{row['default_us']:.1f} | {best:.1f} | "
                       f"{row['kv_bytes'] / best / 1e6:.2f} | {name} | {row['sdpa_132_us']:.1f} | "
                       f"{row['sdpa_132_us'] / best:.2f} |")
        out.append("")
    norm = res.get("norm_share")
    if norm:
        out += ["## RMSNorm against one Llama-3-8B layer's linear layers (132 SMs)", "",
                "| tokens | rms_norm µs | linear layers µs | 2 norms / linears |", "|---|---|---|---|"]
        for row in norm["rows"]:
            out.append(f"| {row['tokens']} | {row['rms_norm_us']:.1f} | "
                       f"{sum(row['linear_us'].values()):.1f} | "
                       f"{100 * row['two_norms_over_linears']:.1f}% |")
        out.append("")
    if res["errors"]:
        out += ["Errors: " + ", ".join(res["errors"]), ""]
    return "\n".join(out)


def main() -> int:
    functions = {"stream_depth": stream_depth, "attention_configs": attention_configs,
                 "norm_share": norm_share}
    return sections.run_benchmark("attention_tuning", __doc__.splitlines()[0], functions,
                                  markdown, budget_s=400.0, reps=10)


if __name__ == "__main__":
    sys.exit(main())
