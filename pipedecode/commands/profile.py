"""`pipedecode profile --out FILE [--quick] [--name NAME]`: measure this GPU's device profile.

Builds the profile (`profiles.measure.build_profile`) from the GPU timer of the runtime
(`runtime.profile_gpu.CudaTimer`: pipedecode's own kernels on green-context partitions) with a
progress bar, and writes the profile JSON the planner reads (`pipedecode plan --device FILE`, or
ship it as pipedecode/profiles/data/<name>.json). Without a CUDA GPU it stops with a one-line
error.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile", help="measure a device profile on this GPU (needs CUDA)",
        description="Measure GEMM and decode-attention latency tables across SM partitions, the "
                    "co-run slowdown and the bandwidth per SM count, and write a profile JSON.")
    parser.add_argument("--out", required=True, help="where to write the profile JSON")
    parser.add_argument("--quick", action="store_true",
                        help="a small grid (one model, fewer sizes and SM counts): about a minute")
    parser.add_argument("--name", default=None,
                        help="profile name (default: from the GPU, e.g. h100)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    import torch

    from pipedecode.errors import ProfileError
    from pipedecode.profiles import measure

    if not torch.cuda.is_available():
        raise ProfileError("pipedecode profile measures a CUDA GPU and none is visible here; run "
                           "it on the GPU machine, or plan with a built-in profile (--device h100)")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such directory for --out: {folder}")
    from tqdm import tqdm

    from pipedecode.runtime.profile_gpu import CudaTimer

    timer = CudaTimer(device_index=args.device)
    facts = timer.facts()
    if args.name:
        facts = dataclasses.replace(facts, name=args.name)
    spec = measure.MeasureSpec.quick() if args.quick else measure.MeasureSpec()
    if not timer.support:
        print(f"pipedecode profile: no SM partitions here ({timer.route}); measuring the whole "
              f"GPU only")
        spec = dataclasses.replace(spec, sm_counts=(facts.sm_count,),
                                   bandwidth_sm_counts=(facts.sm_count,), corun_memory_sms=())
    steps = len(measure.plan_steps(spec, facts))
    profile = measure.build_profile(
        facts, timer, spec,
        progress=lambda it: tqdm(it, total=steps, desc=f"profiling {facts.name}", unit="op"))
    with open(args.out, "w") as fh:
        fh.write(profile.to_json() + "\n")
    print(f"wrote {args.out}: {facts.name}, {len(profile.gemm_latency)} GEMM and "
          f"{len(profile.attention_latency)} attention points, co-run slowdown "
          f"{profile.corun_slowdown:.2f}, {profile.hbm_bytes_per_s / 1e12:.2f} TB/s copy, "
          f"{profile.peak_flops_per_s / 1e12:.0f} TFLOP/s")
    return 0
