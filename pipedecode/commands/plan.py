"""`pipedecode plan`: plan a decode step (SM split, micro-batches, switch point) to schedule JSON.

Owns parsing workload specs (a length, a file of lengths, a seeded distribution) and the
summary it prints. Counts are bounded by what the device holds before any list of that length
is made, and the schedule file appears only once planning succeeded. Knows nothing of how
planning works: it calls `pipedecode.planner.plan`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

from pipedecode.commands.common import Outputs, provenance, speedup_words
from pipedecode.errors import PlanningError

SPEC_HELP = ("a length (1024), a file of lengths (one per line, or a JSON list), or a seeded "
             "distribution: uniform:LO:HI or normal:MEAN:STD")
SPEC = "SPEC"

EPILOG = """\
examples:
  pipedecode plan --model llama-3-8b --device h100 --batch 256 --context 1024 --out s.json
  pipedecode plan --model llama-3-8b --device h200 --batch 256 --context uniform:512:4096 \\
      --remaining uniform:1:512 --waiting 64 --prompt-len normal:1024:256 --output-len 256
  pipedecode plan --model ./my-llama --device profiles/h100.json --context lens.txt --out s.json

The schedule is JSON (docs/schedule-schema.md); `pipedecode show s.json` draws it."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="plan the SM split, micro-batches and switch point; write schedule JSON",
        description="Plan one decode step of a batch: how many SMs the memory-bound side "
                    "(attention) gets, which requests form which micro-batch, and, with "
                    "--waiting, when to stop decoding and prefill the queue (TD-Pipe's switch "
                    "point). Pure CPU work: no GPU is touched.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="preset name (llama-3-8b, ...), hub id, or local model directory")
    parser.add_argument("--device", required=True,
                        help="device profile name (h100, h200, a100, rtx4090, nvidia-h100-x1, "
                             "...) or a profile JSON file")
    parser.add_argument("--batch", type=int, default=None,
                        help="requests in the running batch (default: the count a --context "
                             "file lists, else 1)")
    parser.add_argument("--context", required=True, metavar=SPEC,
                        help=f"context lengths of the batch: {SPEC_HELP}")
    parser.add_argument("--waiting", default=None,
                        help="waiting prompts for the switch point: a count (lengths from "
                             "--prompt-len/--output-len) or a file of 'prompt_len output_len' "
                             "lines")
    parser.add_argument("--prompt-len", default="1024", metavar=SPEC,
                        help="prompt lengths of the waiting prompts, as --context (default 1024)")
    parser.add_argument("--output-len", default="256", metavar=SPEC,
                        help="predicted output lengths of the waiting prompts (default 256)")
    parser.add_argument("--remaining", default="uniform:1:512", metavar=SPEC,
                        help="predicted remaining output lengths of the batch, used with "
                             "--waiting (default uniform:1:512)")
    parser.add_argument("--horizon", type=int, default=None,
                        help="latest decode step the switch point may choose (default: when the "
                             "running batch's last predicted request finishes)")
    parser.add_argument("--switch-cost-us", type=float, default=2000.0,
                        help="cost of a decode-to-prefill phase switch in microseconds "
                             "(default 2000)")
    parser.add_argument("--micro-batches", type=int, default=2,
                        help="micro-batches to interleave, >= 2 (default 2)")
    parser.add_argument("--kv-budget-gib", type=float, default=None,
                        help="memory for the KV cache (default: 90%% of the device minus weights)")
    parser.add_argument("--solver", choices=("cbc", "ortools"), default="cbc",
                        help="ILP solver: PuLP's bundled CBC (default) or OR-Tools")
    parser.add_argument("--seed", type=int, default=0, help="seed of the length distributions")
    parser.add_argument("--out", default="schedule.json", help="schedule JSON to write")
    parser.set_defaults(func=_run)


def lengths(spec: str, count: int | None, rng: random.Random, what: str) -> list[int]:
    """Integer lengths from a spec; `count` None takes a file's length (or 1)."""
    if os.path.isfile(spec):
        values = _read_lengths(spec, what)
        if count is not None and len(values) != count:
            raise PlanningError(f"{what}: {spec} lists {len(values)} lengths but --batch is "
                                f"{count}")
        return values
    kind, _, rest = spec.partition(":")
    n = 1 if count is None else count
    try:
        if not rest:
            return [_positive(int(kind), what)] * n
        args = [float(a) for a in rest.split(":")]
        if kind == "uniform" and len(args) == 2 and 0 < args[0] <= args[1]:
            return [rng.randint(int(args[0]), int(args[1])) for _ in range(n)]
        if kind == "normal" and len(args) == 2 and args[1] >= 0:
            return [max(1, round(rng.gauss(args[0], args[1]))) for _ in range(n)]
    except ValueError:
        pass
    raise PlanningError(f"{what}: cannot read {spec!r}; use {SPEC_HELP}")


def _positive(value: int, what: str) -> int:
    if value <= 0:
        raise PlanningError(f"{what}: lengths must be positive, got {value}")
    return value


def _read_lengths(path: str, what: str) -> list[int]:
    try:
        with open(path) as f:
            text = f.read()
    except UnicodeDecodeError:
        raise PlanningError(f"{what}: {path} is not a text file of lengths") from None
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else text.split()
        values = [int(v) for v in values]
    except (ValueError, TypeError):
        raise PlanningError(f"{what}: {path} must hold integers (one per line or a JSON "
                            f"list)") from None
    if not values or min(values) <= 0:
        raise PlanningError(f"{what}: {path} must hold at least one positive length")
    return values


def _waiting(args: argparse.Namespace, rng: random.Random, bound) -> list[tuple[int, int]]:
    if args.waiting is None:
        return []
    if os.path.isfile(args.waiting):
        values = _read_lengths(args.waiting, "--waiting")
        if len(values) % 2:
            raise PlanningError("--waiting: the file must hold 'prompt_len output_len' pairs")
        return list(zip(values[::2], values[1::2]))
    try:
        count = int(args.waiting)
    except ValueError:
        raise PlanningError(f"--waiting: {args.waiting!r} is neither a count nor a file") from None
    if count <= 0:
        raise PlanningError("--waiting: the count must be positive")
    bound(count, "--waiting queue")
    prompts = lengths(args.prompt_len, count, rng, "--prompt-len")
    return list(zip(prompts, lengths(args.output_len, count, rng, "--output-len")))


def _check_numbers(args: argparse.Namespace) -> int | None:
    """The options that need no model; returns the KV budget in bytes (None: the default)."""
    for name in ("batch", "horizon"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise PlanningError(f"--{name} must be positive, got {value}")
    if not (math.isfinite(args.switch_cost_us) and args.switch_cost_us >= 0):
        raise PlanningError(f"--switch-cost-us must be a finite number >= 0, "
                            f"got {args.switch_cost_us}")
    if args.kv_budget_gib is None:
        return None
    if not (math.isfinite(args.kv_budget_gib) and args.kv_budget_gib > 0):
        raise PlanningError(f"--kv-budget-gib must be a positive number, got {args.kv_budget_gib}")
    return int(args.kv_budget_gib * 2 ** 30)


def _run(args: argparse.Namespace) -> int:
    from pipedecode.planner import plan
    from pipedecode.planner.problem import check_request_count, resolve_model
    from pipedecode.profiles import load_profile

    budget = _check_numbers(args)
    with Outputs() as outputs:
        out = outputs.path(args.out)
        shape, profile = resolve_model(args.model), load_profile(args.device)

        def bound(count: int, what: str) -> None:
            check_request_count(count, shape, profile, budget, what=what)

        if args.batch is not None:
            bound(args.batch, "--batch")
        rng = random.Random(args.seed)
        context = lengths(args.context, args.batch, rng, "--context")
        waiting = _waiting(args, rng, bound)
        remaining = lengths(args.remaining, len(context), rng, "--remaining") if waiting else None
        start = time.perf_counter()
        schedule = plan(args.model, profile, context, waiting=waiting,
                        remaining_output_lens=remaining, solver=args.solver,
                        num_micro_batches=args.micro_batches, kv_budget_bytes=budget,
                        switch_cost_us=args.switch_cost_us, horizon_steps=args.horizon)
        seconds = time.perf_counter() - start
        with open(out, "w") as f:
            f.write(schedule.to_json())
        outputs.commit()
    print(summary(schedule, provenance(profile)))
    print(f"planned in {seconds:.2f} s with {args.solver}; wrote {args.out}")
    return 0


def summary(schedule, source: str) -> str:
    """A few lines: the split, the micro-batches, the predictions (with `source`, where the
    profile's numbers come from), the switch point."""
    s = schedule
    split = {"interleaved": f"{s.memory_sms} memory + {s.compute_sms} compute SMs",
             "coresident": f"both sides on all {s.compute_sms} SMs (attention within "
                           f"{s.attention_smem_bytes // 1024} KiB per SM)"
             }.get(s.mode, f"no split ({s.compute_sms} SMs)")
    sizes = ", ".join(f"{m.tokens} req/{m.kv_tokens} ctx" for m in s.micro_batches)
    lines = [f"{s.model.name} on {s.device}: {s.mode}, {split}",
             f"  micro-batches: {sizes}",
             f"  predicted step {s.predicted_step_us / 1e3:.3f} ms | sequential "
             f"{s.sequential_step_us / 1e3:.3f} ms | roofline floor "
             f"{s.roofline_floor_us / 1e3:.3f} ms | {speedup_words(s.speedup, source)}"]
    if s.mode_reason:
        lines.append(f"  why: {s.mode_reason}")
    if s.switch is not None:
        w = s.switch
        lines.append(f"  switch to prefill after {w.step} decode steps, admitting "
                     f"{len(w.admitted_prompts)} prompts: {w.tokens_per_s:.0f} tok/s "
                     f"(TD-Pipe rule: after {w.tdpipe_step}, {w.tdpipe_tokens_per_s:.0f} tok/s)")
    return "\n".join(lines)

