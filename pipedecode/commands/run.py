"""`pipedecode run`: the whole pipeline once, on built-in defaults, saying what it did.

Capture and classify the decode step (passes), plan it for a device profile (planner), then
serve a handful of ragged requests (some with stop ids, so they end mid-batch) through the
engine (`LLM` on the paged model runner: continuous batching, the temporal policy) and generate
with `pipedecode.compile`, each compared token for token with transformers' own generation. On
a CPU this runs the tiny preset in float32; on a GPU it runs in bfloat16 and interleaves where
the plan says it pays.
A model directory's own weights are loaded (presets, and `--random-weights`, build random
ones). Before any weight is made, the memory the run needs is compared with what the device has
free: too little stops the run in one line; enough, for a large model, prints how long the run
is expected to take. The schedule file appears only when every check passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from pipedecode.commands.common import Outputs, provenance, speedup_words

HELP = "run the whole pipeline (capture, classify, plan, execute) on a preset and check it"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help=HELP, description=HELP + ". Defaults need no download and no GPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny-llama",
                        help="preset name (random weights), or a local directory or hub id "
                             "(its own weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights of the model's shape instead of its own")
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
    from pipedecode.models import PRESETS, check_positions, weights_present

    for name in ("batch", "prompt_len", "new_tokens"):
        if getattr(args, name) <= 0:
            raise PipedecodeError(f"--{name.replace('_', '-')} must be positive, "
                                  f"got {getattr(args, name)}")
    check_positions(args.model, args.prompt_len + args.new_tokens,
                    "--prompt-len + --new-tokens")
    if os.path.isdir(args.model) and not args.random_weights and not weights_present(args.model):
        raise PipedecodeError(f"{args.model} holds no weights (*.safetensors or "
                              f"pytorch_model*.bin); pass --random-weights to run random "
                              f"weights of its shape")
    args.random_weights = args.random_weights or args.model in PRESETS


def run_bytes(shape, batch: int, max_context: int) -> dict[str, int]:
    """What the run holds at its peak, by part: the weights, the runner's fused q/k/v and
    gate/up copies, and two KV caches of the batch (the engine's, and transformers' static
    cache under pipedecode.compile). Activations are a few rows of the batch: left out."""
    fused = sum(s.n * s.k for s in shape.linears() if s.name in ("qkv_proj", "gate_up_proj"))
    return {"weights": shape.weight_bytes(),
            "fused copies": shape.num_layers * fused * shape.dtype_bytes,
            "KV caches": 2 * batch * max_context * shape.kv_bytes_per_token()}


def _check_memory(args: argparse.Namespace, shape, device: str, context: int) -> None:
    """Stop before building anything when the run cannot fit the device (and, loading real
    weights for a GPU, the RAM they pass through)."""
    from pipedecode.models import check_memory, dtype_name, gib

    parts = run_bytes(shape, args.batch, context + 1)
    words = ", ".join(f"{gib(v)} of {k}" for k, v in parts.items())
    check_memory(sum(parts.values()), device,
                 f"running {args.model} in {dtype_name(_dtype(shape))} ({words})",
                 "try a smaller model (tiny-llama), a smaller --batch, or a GPU"
                 if device == "cpu" else "try a smaller model or a smaller --batch")
    if not args.random_weights and device != "cpu":     # transformers loads into RAM first
        check_memory(parts["weights"], "cpu", f"loading {args.model}'s weights",
                     "free some memory")


def _say_how_long(args: argparse.Namespace, shape, device: str) -> None:
    from pipedecode.models import dtype_name, gib

    seconds = expected_seconds(shape, device, args.batch, args.new_tokens)
    if seconds is not None:
        print(f"      {gib(shape.weight_bytes())} of {dtype_name(_dtype(shape))} weights on "
              f"{device}: expect roughly {_duration(seconds)} (a short probe of this device's "
              f"memory rates; Dynamo's captures come on top)", flush=True)


def _dtype(shape):
    import torch

    return torch.bfloat16 if shape.dtype_bytes == 2 else torch.float32


def _probe_seconds_per_byte(device: str, dtype) -> tuple[float, float]:
    """(seconds per byte to fill weights with random numbers, to read them in a 4-token linear),
    timed on one 4096 x 4096 matrix (64 MiB in float32) on `device`."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    w = torch.empty(4096, 4096, dtype=dtype, device=device)
    x = torch.randn(4, 4096, dtype=dtype, device=device)
    torch.nn.functional.linear(x, w.normal_(0.0, 0.02))        # warm-up
    sync()
    start = time.perf_counter()
    w.normal_(0.0, 0.02)
    sync()
    fill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    sync()
    read = (time.perf_counter() - start) / 3
    return fill / (w.numel() * w.element_size()), read / (w.numel() * w.element_size())


def expected_seconds(shape, device: str, batch: int, new_tokens: int) -> float | None:
    """A rough wall time for a model of a GiB or more (None below: it takes seconds).

    Decode steps read every weight once, so each forward costs about the weights' bytes at
    the probed read rate: transformers' references run prompt by prompt (a prefill and
    new_tokens - 1 steps each), twice (without stops, then with each request's stop ids), the
    engine prefills the batch and steps it (about new_tokens forwards), and pipedecode.compile
    does the same. Building the weights costs one random fill. Dynamo's captures and the
    planner are not counted."""
    weights = shape.weight_bytes()
    if weights < 2 ** 30:
        return None
    fill, read = _probe_seconds_per_byte(device, _dtype(shape))
    forwards = 2 * batch * new_tokens + 2 * new_tokens
    return weights * (fill + forwards * read)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


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

    from pipedecode.models import build_model, load_model, model_shape
    from pipedecode.profiles import load_profile

    _check(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    profile = load_profile(args.device)
    shape = dataclasses.replace(model_shape(args.model), dtype_bytes=dtype.itemsize)
    context = args.prompt_len + args.new_tokens       # the longest request's, at most
    _check_memory(args, shape, device, context)
    weights = f"random weights, seed {args.seed}" if args.random_weights else \
        f"weights from {args.model}"
    print(f"pipedecode run: {args.model} ({weights}; {shape.num_layers} layers, "
          f"{shape.num_heads}/{shape.num_kv_heads} heads) on {device}, {dtype}; profile "
          f"{profile.name} ({provenance(profile)})")
    _say_how_long(args, shape, device)
    with Outputs() as outputs:
        plan_out = outputs.path(args.plan_out) if args.plan_out else None
        schedule, prompts = _analyze_and_plan(args, shape, profile)
        if args.random_weights:
            model = build_model(args.model, dtype=dtype, seed=args.seed, device=device)
        else:
            model = load_model(args.model, dtype=dtype, device=device)
        ok = _execute(args, model, prompts, schedule)
        if plan_out and ok:
            with open(plan_out, "w") as f:
                f.write(schedule.to_json())
            outputs.commit()
            print(f"schedule written to {args.plan_out} (see: pipedecode show {args.plan_out})")
    return 0 if ok else 1


def _analyze_and_plan(args: argparse.Namespace, shape, profile):
    """Steps 1 and 2: the captured step's stages, and the planner's schedule for the prompts."""
    from pipedecode.passes.report import analyze_model
    from pipedecode.planner import plan

    prompts = _prompts(args.batch, args.prompt_len, shape.vocab_size, args.seed)
    context = max(p.numel() for p in prompts) + args.new_tokens
    report = analyze_model(args.model, profile, batch_size=args.batch, context_len=context)
    layer_bounds = [s["bound"] for s in report["stages"] if s["segment"].startswith("layer")]
    per_layer = len(layer_bounds) // max(shape.num_layers, 1)
    print(f"[1/4] captured the decode step: {len(report['stages'])} stages, {per_layer} per "
          f"decoder layer ({' -> '.join(layer_bounds[:per_layer])}) at batch {args.batch}, "
          f"context {context}")
    start = time.perf_counter()
    schedule = plan(args.model, profile, [p.numel() + args.new_tokens for p in prompts])
    print(f"[2/4] planned in {1e3 * (time.perf_counter() - start):.0f} ms: {schedule.mode}, "
          f"memory/compute SMs {schedule.memory_sms}/{schedule.compute_sms}, "
          f"{len(schedule.micro_batches)} micro-batch(es); predicted step "
          f"{schedule.predicted_step_us:.1f} us vs sequential "
          f"{schedule.sequential_step_us:.1f} us, "
          f"roofline floor {schedule.roofline_floor_us:.1f} us on {profile.name}: "
          f"{speedup_words(schedule.speedup, provenance(profile))}")
    return schedule, prompts


def _stop_ids(free, new_tokens: int) -> list[tuple[int, ...]]:
    """Stop token ids for every other request (from the second): the token its greedy output
    (`free`, [requests, new_tokens]) reaches half-way, so it stops mid-batch."""
    return [(int(free[i, new_tokens // 2]),) if i % 2 and new_tokens > 2 else ()
            for i in range(free.shape[0])]


def _reference(model, prompts, new_tokens: int, stops) -> list[list[int]]:
    """transformers' own greedy generate per request, stopping at the model's EOS and the
    request's stop ids."""
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    rows = []
    for prompt, stop in zip(prompts, stops):
        ids = prompt[None].to(model.device)
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                             eos_token_id=(eos + list(stop)) or None)
        rows.append(out[0, ids.shape[1]:].tolist())
    return rows


def _engine(args: argparse.Namespace, model, prompts, free) -> bool:
    """Step 3: the requests through the engine (LLM, paged runner), against transformers."""
    from pipedecode.engine import LLM, SamplingParams
    from pipedecode.models import model_shape
    from pipedecode.runtime.kv_cache import PagedKVCache

    stops = _stop_ids(free, args.new_tokens)
    reference = _reference(model, prompts, args.new_tokens, stops)
    block = 16
    per_block = PagedKVCache.bytes_per_block(model_shape(model), block,
                                             next(model.parameters()).dtype)
    blocks = 1 + sum(-(-(p.numel() + args.new_tokens) // block) for p in prompts)
    llm = LLM(model, device=args.device, kv_cache_memory=blocks * per_block, block_size=block)
    # (a pool for the batch at full length: the engine never preempts here)
    params = [SamplingParams(max_tokens=args.new_tokens, temperature=0, stop_token_ids=stop)
              for stop in stops]
    outputs = llm.generate([p.tolist() for p in prompts], params, use_tqdm=False)
    same = sum(list(o.outputs[0].token_ids) == r for o, r in zip(outputs, reference))
    stats, stopped = llm.last_stats, sum(o.outputs[0].stop_reason is not None for o in outputs)
    print(f"[3/4] engine: {len(prompts)} ragged requests ({sum(map(bool, stops))} with stop "
          f"ids, {stopped} stopped by one) through LLM ({stats.policy} policy, paged KV cache "
          f"of {llm.runner.num_blocks - 1} blocks, decode {_decode_how(llm.runner)}): "
          f"{stats.output_tokens} tokens, {stats.output_tokens_per_s:.0f} output tokens/s; "
          f"greedy tokens per request {'identical to' if same == len(prompts) else 'DIFFER from'}"
          f" transformers generate ({same} of {len(prompts)})")
    return same == len(prompts)


def _decode_how(runner) -> str:
    """How the runner's decode steps ran: per mode, the padded batch sizes, and why not
    interleaved where it was planned but ran sequentially."""
    modes: dict[str, list[int]] = {}
    for info in runner.describe()["executors"].values():
        modes.setdefault(info["mode"], []).append(info["rows"])
    words = [f"{mode} on bucket(s) {', '.join(map(str, sorted(rows, reverse=True)))}"
             for mode, rows in modes.items()]
    return "; ".join(words) or "no decode steps"


def _execute(args: argparse.Namespace, model, prompts, schedule) -> bool:
    """Steps 3 and 4: the engine and pipedecode.compile, each against transformers."""
    import torch

    reference = _eager_tokens(model, prompts, args.new_tokens)
    ok = _engine(args, model, prompts, reference)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()    # the engine's KV cache before compile makes its own
    compiled, how = _compiled_tokens(model, prompts, args.new_tokens, args.device)
    same_compiled = torch.equal(compiled, reference)
    print(f"[4/4] pipedecode.compile: generate ran on {how}; greedy tokens "
          f"{'identical to' if same_compiled else 'DIFFER from'} transformers eager")
    print(f"first request: {reference[0].tolist()}")
    return ok and same_compiled
