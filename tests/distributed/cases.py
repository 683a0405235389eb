"""What each process of a pipeline test runs (spawned by tests/distributed/spawn.py), and the
one-process engine runs they are compared with.

Tiny float32 models of 4 layers (so 4 stages hold one each), on the h100 profile, block size
4, a pool of POOL_BLOCKS blocks (the stage with the most layers holds exactly that many: the
one-process engine's pool), interleaving off (the planner is not what is compared).
"""

from __future__ import annotations

import dataclasses

import torch

from pipedecode.engine.llm import LLM, GenerationError, RequestError
from pipedecode.engine.params import SamplingParams
from pipedecode.models import build_model, model_shape
from pipedecode.profiles.registry import resolve_profile
from pipedecode.runtime.kv_cache import PagedKVCache

from tests.engine.helpers import PROMPTS

LAYERS = 4
POOL_BLOCKS = 12                 # 11 usable blocks of 4 tokens: prefill-first preempts
BLOCK_SIZE = 4
GREEDY = SamplingParams(max_tokens=10, temperature=0)
SEEDED = SamplingParams(max_tokens=8, temperature=0.9, top_k=40, top_p=0.95, seed=11,
                        ignore_eos=True)
POLICIES = ("temporal", "prefill-first")
FAMILIES = ("tiny-llama", "tiny-qwen2")


def model_of(family: str) -> torch.nn.Module:
    return build_model(family, dtype=torch.float32, seed=0, num_hidden_layers=LAYERS)


def pool_bytes(model, stages: int) -> int:
    """kv_cache_memory that gives the pool POOL_BLOCKS blocks with `stages` stages."""
    from pipedecode.distributed.layout import balanced_layers

    shape = model_shape(model)
    most = max(balanced_layers(shape, resolve_profile("h100"), stages, 256)) if stages > 1 \
        else shape.num_layers
    per_block = PagedKVCache.bytes_per_block(dataclasses.replace(shape, num_layers=most),
                                             BLOCK_SIZE, torch.float32)
    return POOL_BLOCKS * per_block


def engine(model, stages: int, policy: str, **options) -> LLM:
    return LLM(model, device="h100", policy=policy, block_size=BLOCK_SIZE, interleave=False,
               kv_cache_memory=pool_bytes(model, stages), pipeline_parallel_size=stages,
               **options)


def mixed_params() -> list[SamplingParams]:
    """Greedy requests of several lengths, one seeded sampled request among them."""
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (1, 2, 10, 10, 4, 10, 10, 6)]
    params[3] = SEEDED
    return params


def tokens(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def run_cases(stages: int) -> dict:
    """Every (family, policy) case on `stages` stages (stages 1: one process, no torchrun):
    greedy tokens of PROMPTS, then the mixed requests; preemptions and pool size."""
    out = {}
    for family in FAMILIES:
        model = model_of(family)
        for policy in POLICIES:
            llm = engine(model, stages, policy)
            greedy = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
            mixed = llm.generate(PROMPTS, mixed_params(), use_tqdm=False)
            stats = llm.last_stats
            out[(family, policy)] = dict(
                greedy=tokens(greedy) if greedy else None,
                mixed=tokens(mixed) if mixed else None,
                preemptions=stats.preemptions if stats else None,
                kv_blocks=llm.runner.num_blocks,
                stage_layers=llm.pipeline.stage_layers if llm.pipeline else None)
    return out


def refused_then_served(stages: int) -> dict:
    """A call whose request is refused (rank 0 raises RequestError, the other ranks' calls
    return), then a call that runs: the pipeline is not broken by a refusal."""
    llm = engine(model_of("tiny-llama"), stages, "temporal")
    try:
        llm.generate([PROMPTS[0], []], GREEDY, use_tqdm=False)
        refused = None
    except RequestError as exc:
        refused = str(exc)
    return dict(refused=refused, after=tokens(llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False)))


def pipeline_cases(rank: int, size: int) -> dict:
    return dict(run_cases(size), refused=refused_then_served(size))


def failing_stage(rank: int, size: int, stage: int, after: int, how: str,
                  timeout_s: float = 60.0):
    """Stage `stage` fails (how, see worker.inject_fault) after `after` micro-batches; rank
    0's outcome, or this rank's error."""
    from pipedecode.distributed import worker

    model = model_of("tiny-llama")
    llm = engine(model, size, "prefill-first", pipeline_timeout_s=timeout_s)
    if rank == stage:
        worker.inject_fault(after, how, seconds=timeout_s + 2.0)
    try:
        outputs = llm.generate(PROMPTS, mixed_params(), use_tqdm=False)
    except GenerationError as exc:
        return dict(error=str(exc), outputs=[(o.finished, list(o.outputs[0].token_ids),
                                              o.outputs[0].finish_reason, o.outputs[0].error)
                                             for o in exc.outputs])
    return dict(error=None, outputs=outputs)
