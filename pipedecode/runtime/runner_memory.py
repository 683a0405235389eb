"""How many bytes the paged model runner gives its KV block pool.

Owns the sizing rule. Given (`kv_cache_memory_bytes`), that. Otherwise never more than room
for every seat (max_num_seqs) at the longest length (max_model_len), which is all the engine
can use: on the CPU that, at most `CPU_KV_CACHE_BYTES`; on a GPU, at most that, what is free
once everything else the runner holds is in place, measured rather than guessed:
with the weights packed, one probe runs the largest decode step (all its buffers) and the
largest prefill (its transient buffers) on a two-block cache, and samples the step's logits
(a pipeline stage: on its layers, with its input and output residual streams);
the pool gets the free memory (`torch.cuda.mem_get_info`) less that peak, less
`GRAPH_RESERVE_BYTES` for the CUDA graphs captured later (their private pools hold the split-KV
partials and matmul workspaces of one step each) and `HEADROOM_FRACTION` of the device for
the allocator's fragmentation and sampling's sorts. Knows nothing of blocks or sequences.
"""

from __future__ import annotations

import gc

import torch

from pipedecode.runtime.kv_cache import PagedKVCache
from pipedecode.runtime.ops import KernelSet
from pipedecode.runtime.prefill import prefill
from pipedecode.runtime.step import DecodeStep
from pipedecode.runtime.weights import PackedWeights

CPU_KV_CACHE_BYTES = 1 << 30
GRAPH_RESERVE_BYTES = 1 << 30
HEADROOM_FRACTION = 0.05


def usable_kv_bytes(weights: PackedWeights, max_num_seqs: int, max_model_len: int,
                    block_size: int) -> int:
    """Every seat at the longest length, and the null block: more no batch can use."""
    per_block = PagedKVCache.bytes_per_block(weights.shape, block_size, weights.dtype,
                                             num_layers=len(weights.layers))
    return per_block * (max_num_seqs * -(-max_model_len // block_size) + 1)


def cpu_kv_bytes(weights: PackedWeights, max_num_seqs: int, max_model_len: int,
                 block_size: int) -> int:
    """The CPU default: every seat at the longest length, at most CPU_KV_CACHE_BYTES."""
    return min(CPU_KV_CACHE_BYTES,
               usable_kv_bytes(weights, max_num_seqs, max_model_len, block_size))


@torch.no_grad()
def probe_peak_bytes(weights: PackedWeights, kernels: KernelSet, *, max_rows: int,
                     max_model_len: int, prefill_tokens: int, block_size: int) -> int:
    """Bytes allocated at the peak of the largest decode step and prefill (weights excluded)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    cache = PagedKVCache.for_weights(weights, 2, block_size)
    step = DecodeStep(weights, max_rows, max_model_len, kernels=kernels, paged=cache)
    step.set_inputs(step.tokens, torch.ones_like(step.context_lens),
                    block_tables=step.block_tables)
    step.run_sequential()
    if step.has_head:
        step.logits.float().argmax(-1)
    # prompts of max_model_len tokens (the last shorter), every token into slot 0
    lens = [max_model_len] * (prefill_tokens // max_model_len)
    lens += [prefill_tokens - sum(lens)] if prefill_tokens % max_model_len else []
    bounds = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    tokens = torch.zeros(prefill_tokens, dtype=torch.long, device=weights.device)
    slots = torch.zeros(prefill_tokens, dtype=torch.long, device=weights.device)
    hidden = None if step.has_embedding else torch.zeros(  # a later pipeline stage's input
        prefill_tokens, weights.shape.hidden_size, dtype=torch.float32, device=weights.device)
    out = prefill(weights, cache, kernels, tokens, bounds.to(weights.device), slots,
                  hidden=hidden)
    if step.has_head:
        out.float()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del cache, step, tokens, slots, hidden, out
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def gpu_kv_bytes(weights: PackedWeights, kernels: KernelSet, *, max_rows: int,
                 max_model_len: int, prefill_tokens: int, block_size: int) -> tuple[int, dict]:
    """(pool bytes, how they were found) on the weights' GPU."""
    peak = probe_peak_bytes(weights, kernels, max_rows=max_rows, max_model_len=max_model_len,
                            prefill_tokens=prefill_tokens, block_size=block_size)
    free, total = torch.cuda.mem_get_info(weights.device)
    headroom = int(HEADROOM_FRACTION * total)
    pool = free - peak - GRAPH_RESERVE_BYTES - headroom
    return pool, {"free_bytes": free, "activation_peak_bytes": peak,
                  "graph_reserve_bytes": GRAPH_RESERVE_BYTES, "headroom_bytes": headroom}
