"""The decode-step benchmark's baselines: transformers' own decode step at the same points.

Owns the two transformers columns: eager with a DynamicCache holding `context - 1` random
positions, and StaticCache + torch.compile (reduce-overhead; a few points, compiling is slow),
each timed by `runtime.timing` (CUDA events, median). Knows nothing of pipedecode's executor.
Needs a CUDA GPU.
"""

from __future__ import annotations

import gc

import torch

from decode_step_points import SLACK
from pipedecode.runtime.timing import time_us


def hf_model(spec: str):
    """A transformers model of the preset with random bf16 weights on the GPU (SDPA)."""
    import transformers

    from pipedecode.models import SUPPORTED_FAMILIES, make_config

    config = make_config(spec)
    config._attn_implementation = "sdpa"
    cls = getattr(transformers, SUPPORTED_FAMILIES[config.model_type][1])
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = cls(config).eval()
    torch.set_default_dtype(torch.float32)
    return model


@torch.no_grad()
def hf_eager_us(model, batch: int, context: int) -> float:
    from transformers import DynamicCache

    cfg = model.config
    kv_heads, dim = cfg.num_key_value_heads, cfg.head_dim
    cache = DynamicCache(config=cfg)
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(batch, kv_heads, context - 1, dim, device="cuda", dtype=torch.bfloat16)
        cache.update(k, torch.randn_like(k), layer)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device="cuda")
    pos = torch.full((batch, 1), context - 1, device="cuda")

    def step():
        model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True)
        cache.crop(-1)                  # drop the token this step appended

    return time_us(step, iters=2, repeats=3)


@torch.no_grad()
def hf_compiled_us(model, batch: int, context: int) -> float:
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=context + SLACK)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device="cuda")
    model(input_ids=ids, past_key_values=cache, use_cache=True)     # allocates the cache
    for layer in cache.layers:
        layer.keys.normal_()
        layer.values.normal_()
    pos = torch.full((batch, 1), context - 1, device="cuda")
    cache_position = torch.tensor([context - 1], device="cuda")
    compiled = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    def step():
        compiled(input_ids=ids, position_ids=pos, cache_position=cache_position,
                 past_key_values=cache, use_cache=True)

    for _ in range(3):                   # compile and record the CUDA graphs first
        step()
    return time_us(step, iters=3, repeats=3)


def hf_columns(spec: str, todo: list, hf_eager: bool, compile_points: set, report) -> None:
    """transformers eager / StaticCache+compile times into the rows of `todo` [(row, lens)]:
    the uniform points that fit; `report(row)` after each."""
    model = hf_model(spec)
    for row, _ in todo:
        if row.get("skipped") or not isinstance(row["context"], int):
            continue
        key = f"{row['batch']}x{row['context']}"
        try:
            if hf_eager:
                row["hf_eager_us"] = hf_eager_us(model, row["batch"], row["context"])
            if f"{spec}:{key}" in compile_points:
                row["hf_compile_us"] = hf_compiled_us(model, row["batch"], row["context"])
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            row["hf_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        gc.collect()
        torch.cuda.empty_cache()
        report(row)
    del model
    gc.collect()
    torch.cuda.empty_cache()
