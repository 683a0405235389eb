"""Generate through the engine twice, sequential and as planned; print decode tokens/s of each.

Both runs are `pipedecode.LLM` on the paged model runner with the same requests: one with
`interleave=False`, one letting the planner split decode steps into micro-batches interleaved
on SM partitions where it predicts a gain (and the executor's measurement confirms it). A
speedup is printed only when the two runs differ: on a GPU, with the planned run interleaved.
Otherwise the script says why none was measured. CPU (default): the tiny preset in float32;
interleaving needs SM partitions, so the planned run is sequential and the script says why.
GPU: `--model llama-3-8b --batch 512 --prompt 480` runs real shapes (random weights) in bf16.

    python examples/generate_interleaved.py [--model tiny-llama] [--batch 8] [--new-tokens 24]
"""

from __future__ import annotations

import argparse
import gc

import torch

from pipedecode.engine import LLM, SamplingParams
from pipedecode.models import PRESETS, build_model


def _mode(runner) -> tuple[str, str | None]:
    """(interleaved if any decode step ran interleaved, else sequential; why not)."""
    info = runner.describe()
    if any(e["mode"] == "interleaved" for e in info["executors"].values()):
        return "interleaved", None
    reasons = [e["fallback_reason"] for e in info["executors"].values()
               if e.get("fallback_reason")] + list(info["slower"].values())
    reasons += [p["plan_reason"] for p in info["plans"].values() if p.get("plan_reason")]
    return "sequential", reasons[0] if reasons else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens per request")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--device-profile", default="h100")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    model = build_model(args.model, dtype=torch.bfloat16 if cuda else torch.float32,
                        device="cuda" if cuda else "cpu")
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, model.config.vocab_size, (args.prompt,), generator=gen).tolist()
               for _ in range(args.batch)]
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    results, modes, tokens = {}, {}, {}
    for name, interleave in (("sequential", False), ("planned", True)):
        llm = LLM(model, device=args.device_profile, policy="prefill-first",
                  max_num_seqs=args.batch, interleave=interleave)
        runs = [llm.generate(prompts, params, use_tqdm=False) for _ in range(2 if cuda else 3)]
        stats = llm.last_stats                            # the last run: graphs captured
        results[name] = stats.decode_tokens / stats.decode_s
        tokens[name] = [list(o.outputs[0].token_ids) for o in runs[-1]]
        modes[name] = _mode(llm.runner)
        mode, reason = modes[name]
        print(f"{name:>10}: mode={mode} {stats.decode_tokens} decode tokens in "
              f"{stats.decode_s * 1e3:.1f} ms = {results[name]:,.0f} tokens/s"
              + (f"  (sequential because: {reason})" if reason and name == "planned" else ""))
        del llm, runs                   # free this KV cache before the next is allocated
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    same = tokens["sequential"] == tokens["planned"]
    print(f"first request's tokens: {tokens['planned'][0][:12]}")
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
    speedup = results["planned"] / results["sequential"]
    return f"speedup of {mode} over sequential: {speedup:.2f}x (both measured on this GPU)"


if __name__ == "__main__":
    raise SystemExit(main())
