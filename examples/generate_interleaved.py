"""Generate greedily on the executor, sequential and as planned; print tokens/s of each.

A speedup is printed only when the two runs differ: on a GPU, with the planned run interleaved.
Otherwise the script says why none was measured. CPU (default): the tiny preset in float32;
interleaving needs SM partitions, so the planned run falls back to sequential and the script
says so. GPU: `--model llama-3-8b --batch 512 --prompt 480` runs real shapes (random weights)
in bf16 with the planner's schedule for an H100.

    python examples/generate_interleaved.py [--model tiny-llama] [--batch 8] [--new-tokens 24]
"""

from __future__ import annotations

import argparse

import torch

from pipedecode.models import PRESETS, build_model, model_shape
from pipedecode.runtime.engine import build_executor, generate
from pipedecode.runtime.weights import random_weights


def _schedule(spec: str, device: str, lens: list[int]):
    try:
        from pipedecode.planner import plan

        return plan(spec, device, lens, time_limit_s=10)
    except Exception as exc:  # noqa: BLE001 - no solver here: plain sequential, said so
        print(f"no schedule ({type(exc).__name__}: {exc}); the planned run is sequential")
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens per request")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--device-profile", default="h100")
    parser.add_argument("--schedule", default=None,
                        help="a planner schedule JSON (where the planner's solver is missing)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    max_context = args.prompt + args.new_tokens + 8
    if cuda and not args.model.startswith("tiny"):
        source = random_weights(model_shape(args.model), max_positions=max_context,
                                device="cuda", dtype=torch.bfloat16)
    else:
        model = build_model(args.model, dtype=torch.bfloat16 if cuda else torch.float32)
        source = model.cuda() if cuda else model
    vocab = model_shape(args.model).vocab_size
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, vocab, (args.prompt,), generator=gen) for _ in range(args.batch)]
    if args.schedule:
        from pipedecode.planner import load_schedule

        schedule = load_schedule(args.schedule)
    else:
        schedule = _schedule(args.model, args.device_profile, [args.prompt + 1] * args.batch)
    results, modes = {}, {}
    for name, sched in (("sequential", None), ("planned", schedule)):
        executor = build_executor(source, batch_size=args.batch, max_context=max_context,
                                  schedule=sched, autotune=name == "planned")
        runs = [generate(executor, prompts, args.new_tokens) for _ in range(1 if cuda else 3)]
        results[name] = min(runs, key=lambda r: r.decode_seconds)   # CPU timings are noisy
        info = executor.describe()
        modes[name] = (info["mode"], info.get("fallback_reason"))
        print(f"{name:>10}: mode={info['mode']} {args.batch * results[name].decode_steps} tokens "
              f"in {results[name].decode_seconds * 1e3:.1f} ms = "
              f"{results[name].tokens_per_s:,.0f} tokens/s"
              + (f"  (fallback: {info['fallback_reason']})" if "fallback_reason" in info else ""))
        del executor, runs                  # free this KV cache before the next is allocated
        if cuda:
            torch.cuda.empty_cache()
    same = torch.equal(results["sequential"].tokens, results["planned"].tokens)
    print(f"first request's tokens: {results['planned'].tokens[0, :12].tolist()}")
    print(f"{speedup_line(results, modes, cuda)}; tokens identical: {same}")
    return 0


def speedup_line(results: dict, modes: dict, cuda: bool) -> str:
    """The speedup when two different modes ran on a GPU; else why there is none."""
    mode, reason = modes["planned"]
    if not cuda:
        return (f"no speedup measured: on a CPU both runs are sequential "
                f"({reason or 'no SM partitions'})")
    if mode == modes["sequential"][0]:
        why = reason or "the planner chose sequential"
        return f"no speedup measured: the planned run was {mode} too ({why})"
    speedup = results["planned"].tokens_per_s / results["sequential"].tokens_per_s
    return f"speedup of {mode} over sequential: {speedup:.2f}x (both measured on this GPU)"


if __name__ == "__main__":
    raise SystemExit(main())
