"""Compile a transformers model with pipedecode and generate as usual.

Prints tokens/s of transformers' own greedy generation, of `pipedecode.compile(model)` and of
`torch.compile(model.forward, backend="pipedecode")` with transformers' static cache, and how
each ran: on a GPU, `pipedecode.compile`'s greedy `generate` is served by pipedecode's engine
(the paged model runner: decode steps on the executor, planned per batch size; interleaved on
SM partitions where it measures faster, sequential otherwise) and the torch.compile backend
runs each decode step on the executor inside transformers' own loop; on a CPU both run the
captured graph's stages.

    python examples/compile_and_generate.py [--model tiny-llama] [--batch 4] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import copy
import gc
import time

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

import pipedecode
from pipedecode.backend import pipedecode_backend
from pipedecode.models import PRESETS, build_model


class _StepClock(StoppingCriteria):
    """Timestamps each generated token in transformers' loop (it syncs each step anyway)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        if input_ids.is_cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def decode_tokens_per_s(self, batch: int) -> float:
        """Steady decode steps only: from the end of the first decode step to the last."""
        steps = len(self.times) - 2
        return batch * steps / (self.times[-1] - self.times[1]) if steps > 0 else float("nan")


def _timed_generate(model, ids, new_tokens: int, clock: bool = True, **extra):
    """(new tokens, end-to-end tokens/s incl. prefill, steady decode tokens/s or None)."""
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
                  **extra)
    model.generate(ids, **kwargs)                       # warm-up: compile, capture, plan
    steps = _StepClock()
    if clock:
        kwargs["stopping_criteria"] = StoppingCriteriaList([steps])
    if ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    if ids.is_cuda:
        torch.cuda.synchronize()
    batch = ids.shape[0]
    decode = steps.decode_tokens_per_s(batch) if clock else None
    return out[:, ids.shape[1]:], batch * new_tokens / (time.perf_counter() - start), decode


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

    eager_tokens, eager_tps, eager_dps = _timed_generate(model, ids, args.new_tokens)
    print(f"{'transformers generate:':23s}{eager_tps:,.0f} tokens/s generate incl. prefill | "
          f"{eager_dps:,.0f} tokens/s decode steps", flush=True)
    _memory("transformers generate")
    compiled = pipedecode.compile(model, device=args.device_profile)
    # the engine serves generate only without transformers-loop hooks such as a stopping
    # criterion: its own clock (GenerateStats) times the decode steps instead
    served = getattr(compiled, "pipedecode_executor", None)
    tokens, tps, dps = _timed_generate(compiled, ids, args.new_tokens, clock=served is None)
    executor = served.last_executor if served is not None else None
    if served is not None and served.last_stats is not None:
        dps = served.last_stats.decode_tokens / served.last_stats.decode_s
    how = "captured stages (CPU)" if executor is None else f"executor, {executor.mode} mode" + (
        f" ({executor.fallback_reason})" if executor.fallback_reason else "")
    _report("pipedecode.compile", tokens, eager_tokens, tps, eager_tps, dps, eager_dps, how)
    if served is not None:                  # free the engine's KV cache and fused weights
        served.release()
    del compiled, served, executor
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    _memory("pipedecode.compile, released")

    runners: list = []
    backend = copy.copy(model)                         # shares the weights; own forward
    # backend="pipedecode" names the same function once the package is pip-installed (entry
    # point); the function itself also works from a source tree on PYTHONPATH
    backend.forward = torch.compile(model.forward, backend=pipedecode_backend, dynamic=False,
                                    options={"device": args.device_profile, "runners": runners})
    bk_tokens, bk_tps, bk_dps = _timed_generate(backend, ids, args.new_tokens,
                                                cache_implementation="static")
    decode = [r for r in runners if hasattr(r, "executor")]
    bk_how = "captured stages" if not decode else "executor, {}{}".format(
        decode[0].executor.mode,
        f" ({decode[0].executor.fallback_reason})" if decode[0].executor.fallback_reason else "")

    _report("torch.compile backend", bk_tokens, eager_tokens, bk_tps, eager_tps, bk_dps,
            eager_dps, bk_how)
    _memory("torch.compile backend")
    return 0


def _memory(after: str) -> None:
    """GPU memory still allocated and the peak since the last report (what a path left behind)."""
    if torch.cuda.is_available():
        gib = 2 ** 30
        print(f"{'':23s}GPU memory after {after}: {torch.cuda.memory_allocated() / gib:.1f} GiB "
              f"allocated, peak {torch.cuda.max_memory_allocated() / gib:.1f} GiB", flush=True)
        torch.cuda.reset_peak_memory_stats()


def _report(name, tokens, eager_tokens, rate, eager_rate, decode_rate, eager_decode, via):
    """One line per path, printed as soon as it is measured (a later path may run out of memory).

    Ratios to transformers only where a different implementation ran on a GPU (the executor);
    on a CPU the captured stages run the same ops as transformers, so timing them says nothing."""
    # bf16 on a GPU: a near-tie can flip one token and the row diverges after it; per position,
    # the first decode steps say more about correctness than the total
    equal = (tokens == eager_tokens).float()
    first = "/".join(f"{100 * v:.0f}" for v in equal[:, :3].mean(0).tolist())
    measured = torch.cuda.is_available() and via.startswith("executor")
    ratio = (lambda a, b: f" ({a / b:.2f}x)") if measured else (lambda a, b: "")
    print(f"{name + ':':23s}{rate:,.0f} tokens/s{ratio(rate, eager_rate)} generate incl. "
          f"prefill | {decode_rate:,.0f} tokens/s{ratio(decode_rate, eager_decode)} decode "
          f"steps; via {via}; {100 * equal.mean().item():.1f}% of tokens equal to "
          f"transformers' (tokens 1/2/3: {first}%)", flush=True)
    if not measured:
        print(f"{'':23s}no speedup measured: the same ops as transformers ran "
              f"({'the captured graph stages on a CPU' if not torch.cuda.is_available() else via})",
              flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
