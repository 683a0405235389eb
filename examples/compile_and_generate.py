"""Compile a transformers model with pipedecode and generate as usual.

Prints tokens/s of transformers' own greedy generation, of `pipedecode.compile(model)` and of
`torch.compile(model.forward, backend="pipedecode")` with transformers' static cache, and how
each ran: on a GPU, `pipedecode.compile`'s greedy `generate` is served by pipedecode's executor
(planned for the batch; interleaved on SM partitions where it measures faster, sequential
otherwise) and the torch.compile backend runs each decode step on the executor inside
transformers' own loop; on a CPU both run the captured graph's stages.

    python examples/compile_and_generate.py [--model tiny-llama] [--batch 4] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import copy
import gc
import time

import torch

import pipedecode
from pipedecode.backend import pipedecode_backend
from pipedecode.models import PRESETS, build_model


def _timed_generate(model, ids, new_tokens: int, **extra) -> tuple[torch.Tensor, float]:
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
                  **extra)
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
    del compiled, served, executor                     # free the executor's KV cache
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    runners: list = []
    backend = copy.copy(model)                         # shares the weights; own forward
    # backend="pipedecode" names the same function once the package is pip-installed (entry
    # point); the function itself also works from a source tree on PYTHONPATH
    backend.forward = torch.compile(model.forward, backend=pipedecode_backend, dynamic=False,
                                    options={"device": args.device_profile, "runners": runners})
    bk_tokens, bk_tps = _timed_generate(backend, ids, args.new_tokens,
                                        cache_implementation="static")
    decode = [r for r in runners if hasattr(r, "executor")]
    bk_how = "captured stages" if not decode else "executor, {}{}".format(
        decode[0].executor.mode,
        f" ({decode[0].executor.fallback_reason})" if decode[0].executor.fallback_reason else "")

    # bf16 on a GPU: a near-tie can flip one token and the row diverges after it.
    for name, t, rate, via in (("pipedecode.compile", tokens, tps, how),
                               ("torch.compile backend", bk_tokens, bk_tps, bk_how)):
        same = (t == eager_tokens).float().mean().item()
        print(f"{name + ':':23s}{rate:,.0f} tokens/s ({rate / eager_tps:.2f}x) via {via}; "
              f"{100 * same:.1f}% of tokens equal to transformers'")
    print(f"{'transformers generate:':23s}{eager_tps:,.0f} tokens/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
