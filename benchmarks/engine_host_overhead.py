"""Host time of one engine decode step, without a GPU: what the CPU adds to each GPU step.

For N running sequences (prompts uniform in 100..1024 tokens, greedy, blocks of 16), after
one prefill of all of them, times each decode step's host work the engine does around the
GPU step, per part: the scheduler forming the batch (`Scheduler.schedule`: block growth,
micro-batch grouping), the paged runner staging its inputs (`StepInputs.stage`: token ids,
context lengths and block tables into the pinned array; the device copy itself is not timed,
it is one asynchronous launch), the sampler's greedy pick on [N, 16] logits (its
Python around the argmax) and `Scheduler.postprocess` (append, stop checks). The GPU step of
Llama-3-8B takes 10-70 ms; the host must stay far below it, since a step's host work and its
GPU work do not overlap (the sampled tokens are read back each step). The temporal policy's
per-step switch check is included (policy "temporal").

With requests queued and seats free (`--queued`), the temporal policy weighs a switch back
to prefill at every decode step: its decision is timed on its own; `--seqs ''` measures only
that, published as engine_host_overhead_queued.

Usage: python benchmarks/engine_host_overhead.py [--seqs 256,1024] [--steps 200]
       [--queued 256:500:32] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record  # noqa: E402  (benchmarks/record.py)

PARTS = ("schedule", "stage", "sample", "postprocess")


def _engine(num_seqs: int, policy: str, seed: int = 0, waiting: int = 0, free_seats: int = 0):
    """A scheduler with num_seqs sequences prefilled and running, the runner's staging and a
    sampler, as LLM builds them (Llama-3-8B's cost model for the temporal policy). waiting:
    requests queued once decoding has begun, with free_seats seats (and the blocks) to take
    some: the temporal policy then weighs a switch back to prefill at every step."""
    from pipedecode.engine.block_manager import BlockManager
    from pipedecode.engine.params import SamplingParams
    from pipedecode.engine.policies import make_policy
    from pipedecode.engine.sampler import Sampler
    from pipedecode.engine.scheduler import Scheduler, SchedulerConfig
    from pipedecode.engine.sequence import Sequence
    from pipedecode.models import model_shape
    from pipedecode.planner.cost import CostModel
    from pipedecode.profiles.analytic import BUILTIN
    from pipedecode.runtime.runner_inputs import StepInputs

    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(100, 1025, (num_seqs,), generator=gen).tolist()
    block, max_len = 16, 4096
    queued = torch.randint(100, 1025, (waiting,), generator=gen).tolist()
    blocks = sum(-(-(n + 600) // block) for n in lens + queued) + 1
    cost = CostModel(model_shape("llama-3-8b"), BUILTIN["h200"])
    chosen = make_policy("temporal", cost, kv_threshold=1.0) if policy == "temporal" \
        else make_policy("prefill-first")
    sched = Scheduler(SchedulerConfig(max_len, num_seqs + free_seats, 10 ** 7,
                                      eos_token_ids={2}), BlockManager(blocks, block), chosen)
    params = SamplingParams(max_tokens=10 ** 4, temperature=0)
    for i, n in enumerate(lens):
        sched.add(Sequence(i, [7] * n, params))
    batch = sched.schedule()
    if batch.kind != "prefill" or len(batch.seqs) != num_seqs:
        raise RuntimeError(f"the first batch admitted {len(batch.seqs)} of {num_seqs}")
    sched.postprocess(batch, [11] * num_seqs)
    if waiting:
        first = sched.schedule()                  # the decode phase begins (queue empty)
        if first.kind != "decode":
            raise RuntimeError(f"expected a decode step, got a {first.kind} batch")
        sched.postprocess(first, [11] * num_seqs)
        for i, n in enumerate(queued):
            sched.add(Sequence(num_seqs + i, [7] * n, params))
    inputs = StepInputs(num_seqs, max_len // block, torch.device("cpu"), 2 * num_seqs + 64)
    return sched, inputs, Sampler()


def measure(num_seqs: int, steps: int, policy: str) -> dict:
    """Median and 90th-percentile microseconds per part of a decode step."""
    sched, inputs, sampler = _engine(num_seqs, policy)
    logits = torch.zeros(num_seqs, 16)
    logits[:, 11] = 1.0                        # never EOS (2): every sequence keeps running
    times: dict[str, list[float]] = {p: [] for p in PARTS}
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = sched.schedule()
        t1 = time.perf_counter()
        inputs.stage(batch.seqs, num_seqs)
        t2 = time.perf_counter()
        tokens = sampler(logits[:len(batch.seqs)], batch.seqs)
        t3 = time.perf_counter()
        sched.postprocess(batch, tokens)
        t4 = time.perf_counter()
        for part, (a, b) in zip(PARTS, ((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
            times[part].append((b - a) * 1e6)
    total = [sum(parts) for parts in zip(*times.values())]
    row = {"seqs": num_seqs, "policy": policy, "steps": steps,
           "total_us": statistics.median(total),
           "total_p90_us": sorted(total)[int(0.9 * len(total))]}
    row.update({f"{p}_us": statistics.median(v) for p, v in times.items()})
    return row


def measure_switch_check(num_seqs: int, waiting: int, free_seats: int, calls: int) -> dict:
    """The temporal policy's decision at a decode step with `waiting` requests queued and
    `free_seats` seats free: `admit`, timed `calls` times from the same state (the phase set
    back to decode after each: what it admits is not prefilled), and how often it switched."""
    sched, _, _ = _engine(num_seqs, "temporal", waiting=waiting, free_seats=free_seats)
    policy, times, switched = sched.policy, [], 0
    for _ in range(calls):
        t0 = time.perf_counter()
        admitted = policy.admit(sched)
        times.append((time.perf_counter() - t0) * 1e6)
        switched += bool(admitted)
        policy.phase = "decode"
    return {"seqs": num_seqs, "waiting": waiting, "free_seats": free_seats, "calls": calls,
            "admit_us": statistics.median(times),
            "admit_p90_us": sorted(times)[int(0.9 * len(times))], "switched": switched}


def markdown(result: dict) -> str:
    lines = record.heading("Engine host time per decode step", result) + [
        "Host work of one decode step (no GPU): medians over the steps, microseconds.", ""]
    if result["rows"]:
        lines += ["| running sequences | policy | schedule | stage inputs | sample | "
                  "postprocess | total | total p90 |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['seqs']} | {r['policy']} | {r['schedule_us']:.0f} | "
                     f"{r['stage_us']:.0f} | {r['sample_us']:.0f} | {r['postprocess_us']:.0f} | "
                     f"{r['total_us']:.0f} | {r['total_p90_us']:.0f} |")
    if result.get("queued"):
        lines += ["", "The temporal policy's decision (`admit`) at a decode step with requests "
                  "queued and seats free: it weighs a switch back to prefill (prefill-first "
                  "would prefill them at once). Timed from one state, the phase set back to "
                  "decode after each call.", "",
                  "| running sequences | queued | free seats | admit us | admit p90 us | "
                  "switched |", "|---|---|---|---|---|---|"]
        lines += [f"| {q['seqs']} | {q['waiting']} | {q['free_seats']} | {q['admit_us']:.0f} | "
                  f"{q['admit_p90_us']:.0f} | {q['switched']} of {q['calls']} |"
                  for q in result["queued"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", default="256,1024")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--policies", default="prefill-first,temporal")
    parser.add_argument("--queued", default="256:500:32",
                        help="also RUNNING:WAITING:FREE_SEATS, comma-separated: the temporal "
                             "policy's decision with requests queued and seats free ('' for "
                             "none)")
    parser.add_argument("--out", default=None, help="write JSON + markdown here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {**record.environment("cpu"), "rows": [], "queued": []}
    for n in (int(x) for x in args.seqs.split(",") if x):
        for policy in args.policies.split(","):
            result["rows"].append(measure(n, args.steps, policy))
    for spec in (s for s in args.queued.split(",") if s):
        n, waiting, free = (int(x) for x in spec.split(":"))
        result["queued"].append(measure_switch_check(n, waiting, free, args.steps))
    for row in result["rows"] + result["queued"]:
        print({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
    md = markdown(result)
    if args.out:     # the queued rows alone are a result of their own
        name = "engine_host_overhead" if args.seqs else "engine_host_overhead_queued"
        record.publish(args.out, name, result, md)
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
