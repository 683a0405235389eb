"""Greedy decode steps on a static-cache Executor: the executor tests' harness.

Each prompt is prefilled into its cache row (`prefill_request`), then the executor steps the
whole batch, feeding back the argmax, for a fixed number of tokens. This is how the executor
tests compare it with transformers; requests in, tokens out is the engine's job
(`pipedecode.engine.LLM`), and this knows nothing of EOS, sampling or scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipedecode.runtime.executor import Executor
from pipedecode.runtime.prefill import prefill_request


@dataclass(frozen=True)
class Steps:
    tokens: torch.Tensor                 # [batch, new_tokens] int64, the prompts' order
    logits: tuple[torch.Tensor, ...]     # per new token: [batch, vocab] float32 (if kept)


@torch.no_grad()
def greedy_steps(executor: Executor, prompts, new_tokens: int, *,
                 keep_logits: bool = False) -> Steps:
    """`new_tokens` greedy tokens per prompt; prompt i is request id i of the layout."""
    step, layout = executor.step, executor.layout
    if len(prompts) != step.batch_size:
        raise ValueError(f"the executor was compiled for {step.batch_size} requests, got "
                         f"{len(prompts)} prompts")
    if new_tokens <= 0:
        raise ValueError(f"new_tokens must be positive, got {new_tokens}")
    if max(int(p.numel()) for p in prompts) + new_tokens > step.max_context:
        raise ValueError(f"prompts + {new_tokens} new tokens exceed max_context "
                         f"{step.max_context}")
    device = step.tokens.device
    rows_prompts = [(row, prompts[request]) for row, request in enumerate(layout.order)]
    first = torch.stack([prefill_request(step, row, p.to(device))
                         for row, p in rows_prompts]).float()
    tokens = first.argmax(-1)                                 # buffer-row order
    lens = torch.tensor([int(p.numel()) + 1 for _, p in rows_prompts], dtype=torch.int32,
                        device=device)
    out, kept = [tokens], [first] if keep_logits else []
    for _ in range(new_tokens - 1):
        executor.set_inputs(tokens, lens)
        logits = executor.run()
        if keep_logits:
            kept.append(logits.float().clone())
        tokens = logits.argmax(-1)
        lens += 1
        out.append(tokens)
    inverse = torch.tensor(layout.inverse, device=device)
    return Steps(torch.stack(out, 1)[inverse].cpu(), tuple(t[inverse].cpu() for t in kept))
