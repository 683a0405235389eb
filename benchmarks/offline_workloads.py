"""The offline-throughput benchmark's workloads and each one's roofline bound (no GPU).

Three workloads (offline: every request arrives at once), random prompt token ids, their
lengths drawn by pipedecode.sim.workloads (the generators the simulator uses, so a measured
run and its simulation see the same requests):
  a  256 requests, input and output lengths uniform in 100..1024, ignore_eos.
  b  1000 requests with ShareGPT-shaped lengths (`sim.workloads.sharegpt_shaped`: lognormal
     prompt and output lengths with ShareGPT's means as the vLLM paper reports them, filtered as
     vLLM's throughput benchmark filters ShareGPT; its docstring states the parameters). Outputs
     end by max_tokens, not EOS (random weights would stop them at random): the engine predicts
     them with its online estimator, or an oracle.
  c  1000 requests, 1024 in / 1024 out, ignore_eos.
`scale` keeps a fraction of the requests, drawn from the same distributions (the same seed).

The roofline bound of a workload: its requests under continuous batching at the largest batch
the device's memory holds (every running request's whole prompt + output in the KV cache, the
weights beside it), each prefill batch and each decode step at max(FLOPs / peak, bytes /
bandwidth) of the device profile, the FLOPs and bytes from pipedecode.counts; requests join as
others finish, each prefill's last logits giving the first output token.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipedecode import counts
from pipedecode.models import ModelShape
from pipedecode.planner.cost import CostModel
from pipedecode.profiles.schema import DeviceProfile
from pipedecode.sim import workloads as sim_workloads

NAMES = {"a": "uniform 100..1024 in and out, ignore_eos",
         "b": "ShareGPT-shaped lognormal lengths",
         "c": "1024 in / 1024 out, ignore_eos"}
SIZES = {"a": 256, "b": 1000, "c": 1000}
SPECS = {"a": "uniform:100:1024:100:1024", "b": "sharegpt", "c": "fixed:1024:1024"}


@dataclass(frozen=True)
class Workload(sim_workloads.Workload):
    """The simulator's workload (lengths, counts, prompts) with the benchmark's key and whether
    its requests ignore EOS; `spec` says how its lengths were drawn."""

    key: str = ""
    ignore_eos: bool = True


def make_workload(key: str, scale: float = 1.0, seed: int = 0) -> Workload:
    """Workload `key` with round(scale * its size) requests (at least one)."""
    if key not in SIZES:
        raise ValueError(f"unknown workload {key!r}; use one of {', '.join(SIZES)}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    n = max(1, round(scale * SIZES[key]))
    drawn = sim_workloads.make_workload(SPECS[key], n, seed)
    return Workload(drawn.spec, drawn.prompt_lens, drawn.output_lens, seed, key=key,
                    ignore_eos=key != "b")


def prefill_counts(shape: ModelShape, prompt_lens: list[int]) -> counts.Counts:
    """One prefill batch: every layer's GEMMs over all prompt tokens (weights read once), the
    causal attention within each prompt, and the LM head for each prompt's last token."""
    tokens = sum(prompt_lens)
    layer = counts.pre_attn(shape, tokens).counts() + counts.post_attn(shape, tokens).counts() \
        + counts.prefill_attention(shape, prompt_lens)
    head = counts.head_weights(shape)
    return layer.times(shape.num_layers) + counts.Counts(2 * len(prompt_lens) * head,
                                                         head * shape.dtype_bytes)


def kv_capacity_tokens(shape: ModelShape, profile: DeviceProfile) -> int:
    """KV tokens the device holds beside the weights (nothing else counted: a bound)."""
    return int((profile.memory_bytes - shape.weight_bytes()) // shape.kv_bytes_per_token())


def roofline_bound(workload: Workload, shape: ModelShape, profile: DeviceProfile,
                   capacity_tokens: int | None = None) -> dict:
    """The bound of `workload` (see the module docstring): seconds, output and total tokens/s,
    the largest batch reached, decode steps and the prefill's share of the time."""
    cost = CostModel(shape, profile)
    capacity = kv_capacity_tokens(shape, profile) if capacity_tokens is None else capacity_tokens
    need = [p + o for p, o in zip(workload.prompt_lens, workload.output_lens)]
    if max(need) > capacity:
        raise ValueError(f"a request of {max(need)} tokens exceeds the {capacity} KV tokens "
                         f"the device holds")
    waiting, running = list(range(workload.num_requests)), {}     # request -> tokens it holds now
    held, prefill_s, decode_s, steps, widest = 0, 0.0, 0.0, 0, 0
    while waiting or running:
        joined = []
        while waiting and held + need[waiting[0]] <= capacity:
            r = waiting.pop(0)
            joined.append(r)
            held += need[r]                  # reserved at its full length
        if joined:
            prefill_s += cost.floor_us(prefill_counts(shape, [workload.prompt_lens[r]
                                                              for r in joined])) * 1e-6
            for r in joined:                 # the prefill gave each its first output token
                running[r] = workload.prompt_lens[r] + 1
        done = [r for r, n in running.items() if n - workload.prompt_lens[r] >=
                workload.output_lens[r]]
        for r in done:
            del running[r]
            held -= need[r]
        if not running:
            continue
        widest = max(widest, len(running))
        # feeding each running request's last token: context = tokens held so far
        decode_s += cost.floor_us(counts.step(shape, len(running), sum(running.values()))) * 1e-6
        steps += 1
        for r in running:
            running[r] += 1
    seconds = prefill_s + decode_s
    return {"seconds": seconds, "output_tokens_per_s": workload.output_tokens / seconds,
            "total_tokens_per_s": (workload.output_tokens + workload.prompt_tokens) / seconds,
            "largest_batch": widest, "decode_steps": steps, "prefill_share": prefill_s / seconds,
            "capacity_tokens": capacity}
