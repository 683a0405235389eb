"""The sections of run_all.py: each takes a Context and returns a JSON-able dict; and the main
loop of run_all.py and attention_tuning.py (`run_benchmark`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import record  # noqa: E402  (benchmarks/record.py)

from pipedecode.models import model_shape  # noqa: E402
from pipedecode.runtime import kernels, partitions  # noqa: E402
from pipedecode.runtime.timing import l2_bytes, rotations  # noqa: E402
from pipedecode.runtime.kernels import reference  # noqa: E402
from pipedecode.runtime.kernels._attention import AttentionConfig  # noqa: E402
from pipedecode.runtime.kernels.tiling import MatmulConfig, TILES, choose_config  # noqa: E402

ORDER = ("env_partitions", "correctness", "bandwidth", "attention_sweep", "attention", "linear",
         "gate_up", "linear_sweep")
SMS = (32, 48, 64, 80, 96, 112, 132)
GEMM_SMS = (32, 64, 96, 104, 132)
GEMM_TOKENS = (64, 256, 512, 1024, 2048)
MODELS = ("llama-2-7b", "llama-3-8b", "llama-3-70b")


@dataclass
class Context:
    timer: object
    results: dict
    F: object
    best_attention: AttentionConfig = AttentionConfig()
    deadline: float = float("inf")             # time.time() after which loops stop early


def _randn(*shape, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(torch.bfloat16)


def _rel(a, b):
    a, b = a.double(), b.double()
    return float("inf") if not torch.isfinite(a).all() else ((a - b).norm() / b.norm()).item()


def env_partitions(ctx):
    from pipedecode.runtime.kernels._elementwise import sm_ids

    ok, route = partitions.partition_support()
    out = {"support": ok, "route": route, "sm_count": ctx.timer.total}
    try:
        import cuda.bindings
        out["cuda_bindings"] = getattr(cuda.bindings, "__version__", "?")
    except ImportError:
        out["cuda_bindings"] = None
    for label, request, route in (("driver_66", 66, None), ("torch_48", 48, "torch")):
        pair = partitions.make_partitions(request, route=route)
        row = out[label] = {"route": pair.memory.route, "granted": [p.granted_sms for p in pair],
                            "granularity": pair.memory.granularity, "min_sms": pair.memory.min_sms}
        sides = []
        for part in pair:
            with torch.cuda.stream(part.stream):
                ids = sm_ids(4 * ctx.timer.total, "cuda")
            part.stream.synchronize()
            sides.append(set(ids.tolist()))
        row["distinct_sm_ids"] = [len(s) for s in sides]
        row["shared_sm_ids"] = len(sides[0] & sides[1])
    ids = sm_ids(4 * ctx.timer.total, "cuda")
    torch.cuda.synchronize()
    out["whole_gpu_distinct_sm_ids"] = len(set(ids.tolist()))
    return out


def correctness(ctx):
    out = {}
    for name, (b, h, hkv, d, s) in {"gqa_llama3": (16, 32, 8, 128, 1024),
                                     "mha_llama2": (8, 32, 32, 128, 2048),
                                     "gqa_split": (2, 64, 8, 128, 4096)}.items():
        q, k, v = _randn(b, h, d), _randn(b, hkv, s, d), _randn(b, hkv, s, d)
        lens = torch.randint(1, s + 1, (b,), dtype=torch.int32, device="cuda")
        lens[0] = 1
        ref = reference.decode_attention(q, k, v, lens)
        for sms in (32, 132):
            o = torch.full_like(q, float("nan"))
            kernels.decode_attention(q, k, v, lens, sm_count=sms, out=o)
            out[f"attention_{name}_sms{sms}"] = _rel(o, ref)
    for m, n, kk in ((64, 6144, 4096), (512, 4096, 14336), (1024, 28672, 4096)):
        x, w, bias = _randn(m, kk), _randn(n, kk, scale=kk ** -0.5), _randn(n)
        ref = reference.linear(x, w, bias=bias)
        for sms in (32, 104, 132):
            o = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
            kernels.linear(x, w, bias=bias, sm_count=sms, out=o)
            out[f"linear_{m}x{n}x{kk}_sms{sms}"] = _rel(o, ref)
        for impl in ("auto", "cublas"):
            o = kernels.linear(x, w, bias=bias, sm_count=104, impl=impl)
            out[f"linear_{m}x{n}x{kk}_{impl}"] = _rel(o, ref)
        o = kernels.linear(x, w, config=MatmulConfig(block_m=64, block_n=128, split_k=4,
                                                     num_warps=4))
        out[f"linear_{m}x{n}x{kk}_split4"] = _rel(o, reference.linear(x, w))
    x, w = _randn(256, 4096), _randn(2 * 14336, 4096, scale=4096 ** -0.5)
    out["gate_up_silu_256"] = _rel(kernels.gate_up_silu(x, w, sm_count=64, impl="triton"),
                                   reference.gate_up_silu(x, w))
    out["gate_up_silu_256_cublas"] = _rel(kernels.gate_up_silu(x, w, impl="cublas"),
                                          reference.gate_up_silu(x, w))
    out["gate_up_silu_split2"] = _rel(kernels.gate_up_silu(x, w, config=MatmulConfig(
        block_m=64, block_n=64, split_k=2, num_warps=4)), reference.gate_up_silu(x, w))
    x, w = _randn(512, 4096), _randn(4096)
    out["rms_norm"] = _rel(kernels.rms_norm(x, w, 1e-5), reference.rms_norm(x, w, 1e-5))
    b, h, hkv, d, s = 64, 32, 8, 128, 256
    q, k1, v1 = _randn(b, h, d), _randn(b, hkv, d), _randn(b, hkv, d)
    ang = torch.rand(b, d // 2, device="cuda") * 6
    cos, sin = (torch.cat([f(ang)] * 2, -1).to(torch.bfloat16) for f in (torch.cos, torch.sin))
    kc, vc = _randn(b, hkv, s, d), _randn(b, hkv, s, d)
    kc2, vc2 = kc.clone(), vc.clone()
    pos = torch.randint(0, s, (b,), dtype=torch.int32, device="cuda")
    qo = kernels.rope_kv_write(q, k1, v1, cos, sin, kc, vc, pos)
    qr = reference.rope_kv_write(q, k1, v1, cos, sin, kc2, vc2, pos)
    out["rope_q"], out["rope_k_cache"], out["rope_v_cache"] = _rel(qo, qr), _rel(kc, kc2), \
        _rel(vc, vc2)
    out["all_below_1e-2"] = all(v < 1e-2 for v in out.values())
    return out


def bandwidth(ctx):
    rows = {}
    for sms in (8, 16, 32, 48, 64, 80, 96, 112, 132):
        rows[ctx.timer.granted_sms(sms)] = ctx.timer.stream_bytes_per_s(sms) / 1e12
    rows["copy_all"] = ctx.timer.copy_bytes_per_s() / 1e12
    return rows


def _attn_inputs(b, h, hkv, d, s, ragged=False):
    q, k, v = _randn(b, h, d), _randn(b, hkv, s, d), _randn(b, hkv, s, d)
    if ragged:
        lens = torch.randint(64, s + 1, (b,), dtype=torch.int32, device="cuda")
    else:
        lens = torch.full((b,), s, dtype=torch.int32, device="cuda")
    return q, k, v, lens, torch.empty_like(q)


def _attn_us(ctx, inputs, sms, cfg, s):
    q, k, v, lens, o = inputs
    granted = ctx.timer.granted_sms(sms)
    call = lambda: kernels.decode_attention(q, k, v, lens, sm_count=granted, out=o,  # noqa: E731
                                            max_context_len=s, config=cfg)
    return ctx.timer.time_calls([call] * 4, sms)


def attention_sweep(ctx):
    configs = [AttentionConfig(block_n=bn, num_warps=w, num_stages=st)
               for bn in (32, 64, 128) for w in (4, 8) for st in (2, 3)]
    shapes = {"gqa_b128_c2048": (128, 32, 8, 128, 2048), "mha_b32_c2048": (32, 32, 32, 128, 2048)}
    scores, rows = [0.0] * len(configs), []
    for label, (b, h, hkv, d, s) in shapes.items():
        inputs = _attn_inputs(b, h, hkv, d, s)
        for sms in (32, 132):
            times = [_attn_us(ctx, inputs, sms, cfg, s) for cfg in configs]
            best = min(times)
            for i, t in enumerate(times):
                scores[i] += t / best
            rows.append({"shape": label, "sms": sms, "us": times})
        del inputs
    i = min(range(len(configs)), key=scores.__getitem__)
    ctx.best_attention = configs[i]
    return {"configs": [vars(c) for c in configs], "rows": rows, "best": vars(configs[i]),
            "default": vars(AttentionConfig())}


# decode attention benchmark shapes: (batch, heads, kv heads, head dim, context, ragged)
ATTN_SHAPES = {"llama3-8b b256 c1024": (256, 32, 8, 128, 1024, False),
               "llama3-8b b64 c4096": (64, 32, 8, 128, 4096, False),
               "llama3-8b b16 c8192": (16, 32, 8, 128, 8192, False),
               "llama3-8b b128 ragged<=4096": (128, 32, 8, 128, 4096, True),
               "llama2-7b b64 c1024": (64, 32, 32, 128, 1024, False),
               "llama2-7b b16 c4096": (16, 32, 32, 128, 4096, False),
               "llama3-70b b64 c2048": (64, 64, 8, 128, 2048, False)}


def run_benchmark(benchmark: str, description: str, functions: dict, render, *,
                  budget_s: float, reps: int) -> int:
    """Parse --out/--budget-s/--only, run the named sections (`functions`, in order) on a
    `CudaTimer`, and write <out>/<benchmark>_<gpu>.json and .md (`render(results)`)."""
    import torch.nn.functional as F

    from pipedecode.runtime.profile_gpu import CudaTimer

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=record.RESULTS)
    parser.add_argument("--budget-s", type=float, default=budget_s)
    parser.add_argument("--only", default="", help="comma-separated section names")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"{benchmark}: needs a CUDA GPU", file=sys.stderr)
        return 2
    t0 = time.time()
    results = {**record.environment(), "errors": {}}
    os.makedirs(args.out, exist_ok=True)
    ctx = Context(timer=CudaTimer(reps=reps, warmup=3), results=results, F=F,
                  deadline=t0 + args.budget_s)
    names = [n for n in functions if not args.only or n in args.only.split(",")]
    run_sections(ctx, names, functions, record.stem(args.out, benchmark, results) + ".json")
    record.publish(args.out, benchmark, results, render(results))
    print(f"total {time.time() - t0:.0f} s; errors in: {list(results['errors'])}")
    return 0


def run_sections(ctx, names, functions, json_path: str) -> None:
    """Run each named section into ctx.results (a failure is recorded, the rest go on; none
    starts after ctx.deadline), saving the JSON after each."""
    results = ctx.results
    for name in names:
        if time.time() > ctx.deadline:
            results["errors"][name] = "skipped: time budget spent"
            continue
        started = time.time()
        try:
            results[name] = functions[name](ctx)
        except Exception:  # noqa: BLE001 - keep the other sections
            results["errors"][name] = traceback.format_exc()[-3000:]
            print(f"[{name}] FAILED\n{results['errors'][name]}", flush=True)
        print(f"[{name}] {time.time() - started:.1f} s", flush=True)
        with open(json_path, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


def attention(ctx):
    bw = ctx.results.get("bandwidth", {})
    rows = []
    for label, (b, h, hkv, d, s, ragged) in ATTN_SHAPES.items():
        inputs = _attn_inputs(b, h, hkv, d, s, ragged)
        q, k, v, lens, _ = inputs
        kv_bytes = int(lens.sum().item()) * hkv * d * 2 * 2
        qs = q.view(b, hkv, h // hkv, d)
        sdpa = lambda: ctx.F.scaled_dot_product_attention(qs, k, v)  # noqa: E731
        for sms in SMS:
            granted = ctx.timer.granted_sms(sms)
            ours = _attn_us(ctx, inputs, sms, ctx.best_attention, s)
            pps4 = _attn_us(ctx, inputs, sms, replace(ctx.best_attention, programs_per_sm=4), s)
            sdpa_us = ctx.timer.time_calls([sdpa] * 4, sms)
            ceiling = bw.get(granted) or bw.get(str(granted))
            tbs = kv_bytes / (ours * 1e-6) / 1e12
            rows.append({"shape": label, "sms": granted, "ours_us": ours, "pps4_us": pps4,
                         "sdpa_us": sdpa_us, "ours_tbs": tbs, "kv_bytes": kv_bytes,
                         "stream_tbs": ceiling, "of_stream": tbs / ceiling if ceiling else None,
                         "sdpa_over_ours": sdpa_us / ours})
        del inputs, q, k, v, qs
        torch.cuda.empty_cache()
    return {"config": vars(ctx.best_attention), "rows": rows}


def _gemm_sets(m, n, k):
    copies = rotations((m * k + n * k + m * n) * 2, l2_bytes())
    return [(_randn(m, k), _randn(n, k, scale=k ** -0.5), _randn(m, n)) for _ in range(copies)]


def _gemm_us(ctx, sets, sms, impl, config=None):
    granted = ctx.timer.granted_sms(sms)
    if impl == "cublas":
        calls = [lambda x=x, w=w, o=o: torch.matmul(x, w.t(), out=o) for x, w, o in sets]
    else:   # "triton" or "auto" (the dispatch of kernels.linear)
        calls = [lambda x=x, w=w, o=o: kernels.linear(x, w, sm_count=granted, out=o,
                                                      config=config, impl=impl)
                 for x, w, o in sets]
    return ctx.timer.time_calls(calls, sms)


def linear(ctx):
    shapes = {}
    for model in MODELS:
        for lin in model_shape(model).linears():
            shapes.setdefault((lin.n, lin.k), f"{model} {lin.name}")
    rows = []
    for (n, k), label in shapes.items():
        if time.time() > ctx.deadline:
            break
        for m in GEMM_TOKENS:
            sets = _gemm_sets(m, n, k)
            times = {impl: {ctx.timer.granted_sms(s): _gemm_us(ctx, sets, s, impl)
                            for s in GEMM_SMS} for impl in ("triton", "cublas", "auto")}
            for impl, by_sms in times.items():
                full = by_sms[ctx.timer.total]
                ratio = {s: t / (full * ctx.timer.total / s) for s, t in by_sms.items()}
                rows.append({"shape": label, "n": n, "k": k, "tokens": m, "impl": impl,
                             "us": by_sms, "ratio": ratio,
                             "tflops_full": 2 * m * n * k / (full * 1e-6) / 1e12})
            del sets
    return {"rows": rows}


def gate_up(ctx):
    n2, k = 2 * 14336, 4096
    rows = []
    for m in (256, 1024):
        x, w = _randn(m, k), _randn(n2, k, scale=k ** -0.5)
        o, tmp = _randn(m, n2 // 2), _randn(m, n2)
        for sms in (64, 132):
            g = ctx.timer.granted_sms(sms)
            fused = ctx.timer.time_calls(
                [lambda: kernels.gate_up_silu(x, w, sm_count=g, out=o, impl="triton")], sms)
            auto = ctx.timer.time_calls([lambda: kernels.gate_up_silu(x, w, sm_count=g, out=o)],
                                        sms)

            def unfused(impl):
                def call():
                    if impl == "cublas":
                        torch.matmul(x, w.t(), out=tmp)
                    else:
                        kernels.linear(x, w, sm_count=g, out=tmp)
                    torch.mul(ctx.F.silu(tmp[:, :n2 // 2]), tmp[:, n2 // 2:], out=o)
                return call
            rows.append({"tokens": m, "sms": g, "fused_us": fused, "auto_us": auto,
                         "triton_then_torch_us": ctx.timer.time_calls([unfused("triton")], sms),
                         "cublas_then_torch_us": ctx.timer.time_calls([unfused("cublas")], sms)})
    return {"rows": rows}


def linear_sweep(ctx):
    # programs_per_sm=64: one program per unit (no persistence), to see what the loop costs
    configs = [MatmulConfig(block_m=t[0], block_n=t[1], block_k=t[2], split_k=sk,
                            num_warps=t[3], num_stages=t[4], programs_per_sm=pp)
               for t in TILES for sk in (1, 2, 4) for pp in (1, 64)]
    rows = []
    for n, k in ((6144, 4096), (4096, 14336)):
        for m in (256, 1024):
            sets = _gemm_sets(m, n, k)
            for sms in (64, 132):
                g = ctx.timer.granted_sms(sms)
                times = [_gemm_us(ctx, sets, sms, "triton", cfg) for cfg in configs]
                chosen = choose_config(m, n, k, g)
                chosen_us = _gemm_us(ctx, sets, sms, "triton", chosen)
                i = min(range(len(configs)), key=times.__getitem__)
                rows.append({"n": n, "k": k, "tokens": m, "sms": g, "best": vars(configs[i]),
                             "best_us": times[i], "chosen": vars(chosen), "chosen_us": chosen_us,
                             "all_us": times})
    return {"rows": rows}


def markdown(res):
    from report import render  # benchmarks/kernels/report.py

    return render(res)


def geo_mean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None
