"""`pipedecode run`: the whole pipeline once, on built-in defaults, saying what it did.

Capture and classify the decode step (passes), plan it for a device profile (planner), then
generate with the executor that runs the schedule (runtime) and with `pipedecode.compile`, each
compared token for token with transformers' eager generation. On a CPU this runs the tiny
preset in float32; on a GPU it runs in bfloat16 and interleaves where the plan says it pays.
"""

from __future__ import annotations

import argparse
import time

HELP = "run the whole pipeline (capture, classify, plan, execute) on a preset and check it"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help=HELP, description=HELP + ". Defaults need no download and no GPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny-llama",
                        help="preset name, local directory or hub id (weights random for presets)")
    parser.add_argument("--device", default="h100", help="device profile name or JSON file")
    parser.add_argument("--batch", type=int, default=4, help="number of requests")
    parser.add_argument("--prompt-len", type=int, default=12,
                        help="longest prompt; prompts are ragged, from half this length up")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens to generate per request")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and prompts")
    parser.add_argument("--plan-out", default=None, help="also write the schedule JSON here")
    parser.set_defaults(func=_run)


def _check(args: argparse.Namespace) -> None:
    from pipedecode.errors import PipedecodeError

    for name in ("batch", "prompt_len", "new_tokens"):
        if getattr(args, name) <= 0:
            raise PipedecodeError(f"--{name.replace('_', '-')} must be positive, "
                                  f"got {getattr(args, name)}")


def _prompts(batch: int, longest: int, vocab: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(max(1, longest // 2), longest + 1, (batch,), generator=gen)
    return [torch.randint(0, vocab, (int(n),), generator=gen) for n in lens]


def _eager_tokens(model, prompts, new_tokens: int):
    """transformers' own greedy generation, one prompt at a time (no padding to trust)."""
    import torch

    rows = []
    for prompt in prompts:
        ids = prompt[None].to(model.device)
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                             eos_token_id=None)     # no early stop: every request runs full length
        rows.append(out[0, ids.shape[1]:].cpu())
    return torch.stack(rows)


def _compiled_tokens(model, prompts, new_tokens: int, device: str):
    """`pipedecode.compile` on the left-padded batch, as a transformers user would call it."""
    import torch

    import pipedecode

    longest = max(p.numel() for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - p.numel():], mask[i, longest - p.numel():] = p, 1
    compiled = pipedecode.compile(model, device=device)
    out = compiled.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                            max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                            eos_token_id=None)
    served = getattr(compiled, "pipedecode_executor", None)
    executor = served.last_executor if served is not None else None
    how = (f"the executor ({executor.mode} mode)" if executor is not None else
           f"{len(compiled.pipedecode_stages)} captured graph(s) run as stages")
    return out[:, longest:].cpu(), how


def _run(args: argparse.Namespace) -> int:
    import torch

    from pipedecode.models import build_model, model_shape
    from pipedecode.passes.report import analyze_model
    from pipedecode.planner import plan
    from pipedecode.profiles import load_profile
    from pipedecode.runtime.engine import build_executor, generate

    _check(args)
    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    profile = load_profile(args.device)
    shape = model_shape(args.model)
    print(f"pipedecode run: {args.model} ({shape.num_layers} layers, {shape.num_heads}/"
          f"{shape.num_kv_heads} heads) on {'cuda' if on_gpu else 'cpu'}, {dtype}; "
          f"profile {profile.name} ({profile.source})")
    prompts = _prompts(args.batch, args.prompt_len, shape.vocab_size, args.seed)
    context = max(p.numel() for p in prompts) + args.new_tokens

    report = analyze_model(args.model, profile, batch_size=args.batch, context_len=context)
    layer_bounds = [s["bound"] for s in report["stages"] if s["segment"].startswith("layer")]
    per_layer = len(layer_bounds) // max(shape.num_layers, 1)
    print(f"[1/4] captured the decode step: {len(report['stages'])} stages, {per_layer} per "
          f"decoder layer ({' -> '.join(layer_bounds[:per_layer])}) at batch {args.batch}, "
          f"context {context}")

    context_lens = [p.numel() + args.new_tokens for p in prompts]
    start = time.perf_counter()
    schedule = plan(shape, profile, context_lens)
    print(f"[2/4] planned in {1e3 * (time.perf_counter() - start):.0f} ms: {schedule.mode}, "
          f"memory/compute SMs {schedule.memory_sms}/{schedule.compute_sms}, "
          f"{len(schedule.micro_batches)} micro-batch(es); predicted step "
          f"{schedule.predicted_step_us:.1f} us vs sequential {schedule.sequential_step_us:.1f} us, "
          f"roofline floor {schedule.roofline_floor_us:.1f} us on {profile.name}")
    if args.plan_out:
        with open(args.plan_out, "w") as f:
            f.write(schedule.to_json())
        print(f"      schedule written to {args.plan_out} (see: pipedecode show {args.plan_out})")

    model = build_model(args.model, dtype=dtype, seed=args.seed).to("cuda" if on_gpu else "cpu")
    reference = _eager_tokens(model, prompts, args.new_tokens)
    executor = build_executor(model, batch_size=args.batch, max_context=context + 1,
                              schedule=schedule)
    result = generate(executor, [p.to(model.device) for p in prompts], args.new_tokens)
    same = torch.equal(result.tokens, reference)
    why = f" ({executor.fallback_reason})" if executor.fallback_reason else ""
    print(f"[3/4] executor ran the schedule in {executor.mode} mode{why}: "
          f"{result.tokens_per_s:.0f} tokens/s; greedy tokens "
          f"{'identical to' if same else 'DIFFER from'} transformers eager")

    compiled, how = _compiled_tokens(model, prompts, args.new_tokens, args.device)
    same_compiled = torch.equal(compiled, reference)
    print(f"[4/4] pipedecode.compile: generate ran on {how}; greedy tokens "
          f"{'identical to' if same_compiled else 'DIFFER from'} transformers eager")
    print(f"first request: {reference[0].tolist()}")
    return 0 if same and same_compiled else 1
