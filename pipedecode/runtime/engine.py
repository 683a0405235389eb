"""Building a decode-step Executor for a model, and the planner's schedule for a batch.

Owns `build_executor` (weights packed once, the executor with the measured guard) and
`plan_for` (the planner's schedule for these requests on this GPU, or why there is none): what
the decode-step benchmarks, the examples timing single steps and the torch.compile backend's
decode graphs use. Generation lives in the engine (`pipedecode.engine.LLM`); this module knows
nothing of requests, only of one step's batch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pipedecode.runtime.executor import Executor


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
