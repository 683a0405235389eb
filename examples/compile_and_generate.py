"""Compile a transformers model with `pipedecode.compile` and generate as usual.

Prints tokens/s of transformers' own greedy generation and of the compiled model, and how the
compiled model ran: on a GPU greedy `generate` is served by pipedecode's executor (planned for the
batch; interleaved on SM partitions where it measures faster, sequential otherwise), on a CPU by
the captured graph's stages through transformers' loop.

    python examples/compile_and_generate.py [--model tiny-llama] [--batch 4] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import time

import torch

import pipedecode
from pipedecode.models import PRESETS, build_model


def _timed_generate(model, ids, new_tokens: int) -> tuple[torch.Tensor, float]:
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(ids, **kwargs)                       # warm-up: compile, capture, plan
    if ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return out[:, ids.shape[1]:], ids.shape[0] * new_tokens / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=12, help="prompt tokens per request")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--device-profile", default="h100")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    model = build_model(args.model, dtype=torch.bfloat16 if cuda else torch.float32)
    model = model.cuda() if cuda else model
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.config.vocab_size, (args.batch, args.prompt), generator=gen)
    ids = ids.to(model.device)

    eager_tokens, eager_tps = _timed_generate(model, ids, args.new_tokens)
    compiled = pipedecode.compile(model, device=args.device_profile)
    tokens, tps = _timed_generate(compiled, ids, args.new_tokens)
    served = getattr(compiled, "pipedecode_executor", None)
    executor = served.last_executor if served is not None else None
    how = "captured stages (CPU)" if executor is None else f"executor, {executor.mode} mode" + (
        f" ({executor.fallback_reason})" if executor.fallback_reason else "")
    print(f"transformers generate: {eager_tps:,.0f} tokens/s")
    print(f"pipedecode.compile:    {tps:,.0f} tokens/s ({tps / eager_tps:.2f}x) via {how}")
    same = (tokens == eager_tokens).float().mean().item()
    # bf16 on a GPU: a near-tie can flip one token and the row diverges after it.
    print(f"greedy tokens identical: {torch.equal(tokens, eager_tokens)} ({100 * same:.1f}% equal)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
