"""Greedy generation on an Executor: prefill each prompt into its cache row, then decode steps.

Owns `generate` and `GenerationResult`. Requests keep their caller's order outside; inside, the
executor's row layout (micro-batches contiguous) is applied once at the start and undone once at
the end, so the per-step loop only feeds back the argmax. Knows nothing of partitions or graphs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from pipedecode.runtime.executor import Executor
from pipedecode.runtime.prefill import prefill_request


@dataclass(frozen=True)
class GenerationResult:
    tokens: torch.Tensor                 # [batch, new_tokens] int64, callers' order
    logits: tuple[torch.Tensor, ...]     # per new token: [batch, vocab] float32 (if kept)
    decode_seconds: float                # decode steps only (prefill excluded)
    decode_steps: int

    @property
    def tokens_per_s(self) -> float:
        batch = self.tokens.shape[0]
        return batch * self.decode_steps / self.decode_seconds if self.decode_seconds else 0.0


@torch.no_grad()
def generate(executor: Executor, prompts: Sequence[torch.Tensor], max_new_tokens: int, *,
             keep_logits: bool = False, prefill: Callable | None = None) -> GenerationResult:
    """Greedy decoding of `max_new_tokens` per prompt; prompt i is request id i.

    `prefill(step, rows_prompts) -> logits [len(rows_prompts), vocab]` fills the cache rows of
    [(row, prompt), ...] at once (e.g. one batched transformers forward); by default each prompt
    is prefilled on its own by `prefill_request`."""
    step, layout = executor.step, executor.layout
    if len(prompts) != step.batch_size:
        raise ValueError(f"the executor was compiled for {step.batch_size} requests, got "
                         f"{len(prompts)} prompts")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    longest = max(int(p.numel()) for p in prompts)
    if longest + max_new_tokens > step.max_context:
        raise ValueError(f"prompt ({longest}) + new tokens ({max_new_tokens}) exceed the "
                         f"compiled max_context {step.max_context}")
    device = step.tokens.device
    rows_prompts = [(row, prompts[request]) for row, request in enumerate(layout.order)]
    lens = [int(prompt.numel()) + 1 for _, prompt in rows_prompts]
    if prefill is None:
        first_logits = torch.stack([prefill_request(step, row, prompt)
                                    for row, prompt in rows_prompts]).float()
    else:
        first_logits = prefill(step, rows_prompts).float()
    tokens = first_logits.argmax(-1)                          # buffer-row order
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    out, kept = [tokens], [first_logits] if keep_logits else []
    start = time.perf_counter()
    for i in range(max_new_tokens - 1):
        executor.set_inputs(tokens, context_lens)
        logits = executor.run()          # the first call warms up and captures the graph
        if keep_logits:
            kept.append(logits.float().clone())
        tokens = logits.argmax(-1)
        context_lens += 1
        out.append(tokens)
        if i == 0:                       # time steady-state steps only
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    inverse = torch.tensor(layout.inverse, device=device)
    generated = torch.stack(out, 1)[inverse].cpu()
    logits_out = tuple(t[inverse].cpu() for t in kept)
    return GenerationResult(generated, logits_out, elapsed, max(max_new_tokens - 2, 0))


def build_executor(model_or_weights, *, batch_size: int, max_context: int, schedule=None,
                   use_graphs: bool = True, autotune: bool = True) -> Executor:
    """An Executor for a transformers Llama-family model (weights packed once) or PackedWeights.

    `schedule`: a planner Schedule (interleaved where it says so and partitions exist on this
    GPU; sequential otherwise, with `executor.fallback_reason` saying why) or None (sequential).
    `autotune`: keep interleaving only if it measures faster than sequential at the first step.
    """
    from pipedecode.runtime.weights import PackedWeights, pack_hf_model

    weights = model_or_weights if isinstance(model_or_weights, PackedWeights) \
        else pack_hf_model(model_or_weights, max_positions=max_context)
    return Executor(weights, batch_size, max_context, schedule=schedule, use_graphs=use_graphs,
                    autotune=autotune)


def plan_for(model, context_lens: Sequence[int], device=None):
    """(schedule, reason): the planner's schedule for these requests, or (None, why not) where
    planning is impossible here (no GPU to run it on, no solver installed, no feasible plan).
    device: a profile name, JSON path or DeviceProfile; None plans for the GPU this runs on
    (`registry.local_profile`), and a GPU no profile describes raises ProfileError saying how
    to measure one."""
    from pipedecode.profiles.registry import resolve_profile
    from pipedecode.runtime.weights import PackedWeights

    if not torch.cuda.is_available():
        return None, None
    profile = resolve_profile(device)
    try:
        from pipedecode.planner import plan

        spec = model.shape if isinstance(model, PackedWeights) else model
        return plan(spec, profile, list(context_lens)), None
    except Exception as exc:  # noqa: BLE001 - planning is an optimisation, never required
        return None, f"no schedule ({type(exc).__name__}: {exc}); running sequentially"


def reusable(executor: Executor | None, schedule, batch_size: int, max_context: int) -> bool:
    """Whether `executor` runs `schedule` for this batch as it is (same buffers, same layout,
    same partitions), so a new call can skip set-up: allocation, graph capture, the guard."""
    def key(s):
        return None if s is None or s.mode == "sequential" else (
            s.mode, s.memory_sms, tuple(tuple(mb.request_ids) for mb in s.micro_batches))

    return (executor is not None and executor.step.batch_size == batch_size
            and executor.step.max_context == max_context
            and key(executor.schedule) == key(schedule))


def plan_and_build(model, *, context_lens: Sequence[int], max_context: int,
                   device=None, schedule=None) -> Executor:
    """Plan for these requests (unless a schedule is given) and build the executor with the
    measured guard; sequential where planning is impossible here, `fallback_reason` saying why."""
    reason = None
    if schedule is None:
        schedule, reason = plan_for(model, context_lens, device)
    executor = build_executor(model, batch_size=len(context_lens), max_context=max_context,
                              schedule=schedule)
    if reason and not executor.fallback_reason:
        executor.fallback_reason = reason
    return executor
