"""The split tail (stream-K hybrid) against the plain persistent matmul and cuBLAS on 96/104-SM
partitions and all SMs.

One device call: `PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python benchmarks/kernels/streamk.py
--out $OUT`. Partitions are real green contexts (`runtime.profile_gpu.CudaTimer`, driver route);
the kernels get the granted SM count as their grid. Sections, each guarded and stopped once the
time budget is spent: GPU correctness of the split tail (fresh inputs, NaN-poisoned outputs,
three launches each), then per (shape, tokens) and SM count: cuBLAS, the chooser without the
split tail (the kernel as it was), the chooser with it, every tile plain (and with split-K 2 on
all SMs), every tile x tail split where the tiles leave a partial wave, and the chosen split
tail with preallocated counters (no fill per call); then the fused gate/up. Writes
kernels_streamk_<gpu>.json under --out after every point; streamk_report.py renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import asdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import record  # noqa: E402  (benchmarks/record.py)
from pipedecode.models import model_shape  # noqa: E402
from pipedecode.runtime import kernels  # noqa: E402
from pipedecode.runtime.kernels import _matmul, reference  # noqa: E402
from pipedecode.runtime.kernels.tiling import (PAIR_TILES, TAIL_SPLITS, TILES,  # noqa: E402
                                               MatmulConfig, choose_config, tail_plan)
from pipedecode.runtime.profile_gpu import CudaTimer  # noqa: E402
from pipedecode.runtime.timing import rotations  # noqa: E402

SHAPES = (("llama-3-8b", "o_proj"), ("llama-3-8b", "down_proj"), ("llama-3-8b", "qkv_proj"),
          ("llama-2-7b", "down_proj"))
TOKENS = (256, 512, 1024, 2048)
PART_SMS = (104, 96)


def _randn(*shape, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(torch.bfloat16)


def _rel(a, b):
    a, b = a.double(), b.double()
    return float("inf") if not torch.isfinite(a).all() else ((a - b).norm() / b.norm()).item()


def _shape(model, name):
    lin = next(lin for lin in model_shape(model).linears() if lin.name == name)
    return f"{model} {name}", lin.n, lin.k


def _cfg(tile, **kw):
    return MatmulConfig(block_m=tile[0], block_n=tile[1], block_k=tile[2], num_warps=tile[3],
                        num_stages=tile[4], **kw)


def correctness(timer, deadline):
    out = {}
    for model, name in SHAPES:
        label, n, k = _shape(model, name)
        for m in (256, 1024):
            x, w, bias = _randn(m, k), _randn(n, k, scale=k ** -0.5), _randn(n)
            ref = reference.linear(x, w, bias=bias)
            torch.cuda.synchronize()     # the partitions' streams read x, w, bias
            for sms in PART_SMS + (timer.total,):
                g = timer.granted_sms(sms)
                for cfg in (_cfg(TILES[0], tail_split=2), _cfg(TILES[0], tail_split=4),
                            choose_config(m, n, k, g)):
                    errs = []
                    for _ in range(3):     # a race shows as an error that moves between runs
                        o = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
                        with torch.cuda.stream(timer.partition(sms).stream):
                            kernels.linear(x, w, bias=bias, sm_count=g, out=o, config=cfg)
                        torch.cuda.synchronize()
                        errs.append(_rel(o, ref))
                    out[f"{label} {m} sms{g} {_tag(cfg)}"] = max(errs)
            if time.time() > deadline:
                return out
    x, w = _randn(256, 4096), _randn(2 * 14336, 4096, scale=4096 ** -0.5)
    for tile in PAIR_TILES[:2]:
        o = kernels.gate_up_silu(x, w, sm_count=timer.granted_sms(104),
                                 config=_cfg(tile, tail_split=3))
        out[f"gate_up 256 sms104 {tile[0]}x{tile[1]}/t3"] = _rel(o, reference.gate_up_silu(x, w))
    out["max"] = max(out.values())
    return out


def _tag(cfg):
    extra = f"/t{cfg.tail_split}" if cfg.tail_split > 1 else (
        f"/split{cfg.split_k}" if cfg.split_k > 1 else "")
    return f"{cfg.block_m}x{cfg.block_n}{extra}"


def _time(timer, sets, sms, cfg=None, impl="triton", pair=False, locks=None):
    g = timer.granted_sms(sms)
    if impl == "cublas":
        calls = [lambda x=x, w=w, o=o: torch.matmul(x, w.t(), out=o) for x, w, o in sets]
    elif locks is not None:
        calls = [lambda x=x, w=w, o=o: _matmul.matmul(x, w, o, None, cfg, g, pair, locks=locks)
                 for x, w, o in sets]
    elif pair:
        calls = [lambda x=x, w=w, o=o: kernels.gate_up_silu(x, w, sm_count=g, out=o, config=cfg)
                 for x, w, o in sets]
    else:
        calls = [lambda x=x, w=w, o=o: kernels.linear(x, w, sm_count=g, out=o, config=cfg)
                 for x, w, o in sets]
    return timer.time_calls(calls, sms)


def _row(cfg, us):
    return {"config": asdict(cfg), "us": us}


def _has_tail(m, n, k, g, tile):
    tiles = -(-m // tile[0]) * -(-n // tile[1])
    return tail_plan(tiles, g, -(-k // tile[2]), 2).split_tiles > 0


def point(timer, label, n, k, m, pair=False):
    """Every variant of one (shape, tokens) on all SMs and on each partition."""
    n_w = 2 * n if pair else n
    copies = rotations((m * k + n_w * k + m * n) * 2, timer.l2_bytes)
    sets = [(_randn(m, k), _randn(n_w, k, scale=k ** -0.5), _randn(m, n)) for _ in range(copies)]
    torch.cuda.synchronize()
    tiles = PAIR_TILES if pair else TILES
    res = {"shape": label, "n": n, "k": k, "tokens": m, "pair": pair, "by_sms": {}}
    for sms in (timer.total,) + PART_SMS:
        g = timer.granted_sms(sms)
        old = choose_config(m, n, k, g, pair=pair, tail=False)
        new = choose_config(m, n, k, g, pair=pair)
        row = {"old": _row(old, _time(timer, sets, sms, old, pair=pair))}
        if not pair:
            row["cublas"] = _time(timer, sets, sms, impl="cublas")
        plain = [_cfg(t, split_k=s) for t in tiles for s in ((1, 2) if sms == timer.total
                                                              else (1,))]
        row["plain"] = [_row(c, _time(timer, sets, sms, c, pair=pair)) for c in plain]
        tails = [_cfg(t, tail_split=s) for t in tiles if _has_tail(m, n, k, g, t)
                 for s in TAIL_SPLITS if -(-k // s) >= 4 * t[2]]
        row["tail"] = [_row(c, _time(timer, sets, sms, c, pair=pair)) for c in tails]
        known = [row["old"]] + row["plain"] + row["tail"]
        hit = next((r for r in known if r["config"] == asdict(new)), None)
        row["new"] = hit or _row(new, _time(timer, sets, sms, new, pair=pair))
        if new.tail_split > 1 and not pair:
            locks = torch.zeros(4 * timer.total, dtype=torch.int32, device="cuda")
            row["new_prealloc_locks_us"] = _time(timer, sets, sms, new, locks=locks)
        res["by_sms"][g] = row
    return res


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=record.RESULTS)
    parser.add_argument("--budget-s", type=float, default=240.0)
    args = parser.parse_args()
    t0 = time.time()
    deadline = t0 + args.budget_s
    timer = CudaTimer(reps=10, warmup=3)
    props = torch.cuda.get_device_properties(0)
    res = {**record.environment(props.name), "partition_route": timer.route,
           "granted": {s: timer.granted_sms(s) for s in (timer.total,) + PART_SMS},
           "errors": {}, "points": []}
    os.makedirs(args.out, exist_ok=True)
    path = record.stem(args.out, "kernels_streamk", res) + ".json"

    def save():
        with open(path, "w") as fh:
            json.dump(res, fh, indent=1, default=str)

    try:
        res["correctness"] = correctness(timer, t0 + 0.25 * args.budget_s)
        print("correctness max rel err", res["correctness"].get("max"), flush=True)
    except Exception:  # noqa: BLE001 - keep the timings
        res["errors"]["correctness"] = traceback.format_exc()[-3000:]
        print(res["errors"]["correctness"], flush=True)
    zeros = lambda: torch.zeros(256, dtype=torch.int32, device="cuda")  # noqa: E731
    res["zeros_fill_us"] = timer.time_calls([zeros] * 8, timer.total)
    todo = [(*_shape(mo, na), m, False) for mo, na in SHAPES for m in TOKENS]
    todo += [("llama-3-8b gate_up (fused)", 14336, 4096, m, True) for m in (256, 1024)]
    for label, n, k, m, pair in todo:
        if time.time() > deadline:
            res["errors"][f"{label} {m}"] = "skipped: time budget spent"
            continue
        started = time.time()
        try:
            res["points"].append(point(timer, label, n, k, m, pair))
        except Exception:  # noqa: BLE001 - keep the other points
            res["errors"][f"{label} {m}"] = traceback.format_exc()[-3000:]
            print(res["errors"][f"{label} {m}"], flush=True)
        print(f"[{label} {m}] {time.time() - started:.1f} s", flush=True)
        save()
        torch.cuda.empty_cache()
    save()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from streamk_report import render  # benchmarks/kernels/streamk_report.py

    record.publish(args.out, "kernels_streamk", res, render(res))
    print(f"total {time.time() - t0:.0f} s; errors in: {list(res['errors'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
