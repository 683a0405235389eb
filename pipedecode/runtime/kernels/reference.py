"""Torch references for every kernel in `pipedecode.runtime.kernels`; the "torch" kernel set.

Each function computes in the dtype of its inputs, rounding where transformers' eager code
rounds (RMSNorm statistics and the softmax in float32, every other product and sum in the input
dtype): given float32 tensors it is the float32 reference the kernels are tested against; given
a model's tensors it is transformers' eager arithmetic, so a float32 CPU decode step built on
these equals transformers. Everything but `prefill_attention` (which loops over its prompts) is
vectorised without host syncs, so it can be captured in a CUDA graph. Caches are
[blocks, kv_heads, block_size, head_dim]: a static cache is one block of max_context positions per
request, a paged cache is addressed through block tables. Knows nothing of SM partitions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' LlamaRMSNorm over the last dimension: float32 statistics, the normalised
    x cast back to x's dtype, then scaled by weight (in the promoted dtype, rounded to out's)."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return torch.mul(weight, normed, out=out) if out is not None else weight * normed


def linear(x: torch.Tensor, weight: torch.Tensor, *, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias); x: [tokens, k], weight: [n, k]."""
    if bias is None:
        return torch.matmul(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


def linear_add(x: torch.Tensor, weight: torch.Tensor, *, out: torch.Tensor,
               scratch: torch.Tensor | None = None) -> torch.Tensor:
    """out += x @ weight.T as transformers adds a residual: the product rounded to x's dtype
    (into scratch, [tokens, n], when given), then added in out's dtype."""
    return out.add_(linear(x, weight, out=scratch))


def gate_up_silu(x: torch.Tensor, w_gate_up: torch.Tensor, *, out: torch.Tensor | None = None,
                 scratch: torch.Tensor | None = None) -> torch.Tensor:
    """silu(x @ w_gate.T) * (x @ w_up.T); w_gate_up: [2 * inter, k], gate rows first;
    scratch: [tokens, 2 * inter] for the product."""
    inter = w_gate_up.shape[0] // 2
    y = torch.matmul(x, w_gate_up.t(), out=scratch)
    return torch.mul(F.silu(y[:, :inter]), y[:, inter:], out=out)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF rotate-half RoPE; x: [tokens, heads, dim], cos/sin: [tokens, dim] (at each position)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def cache_slots(positions: torch.Tensor, block_size: int,
                block_tables: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(block, offset) of position positions[b] of request b: through row b of block_tables
    [batch, max_blocks], or in block b of a static cache (one block per request)."""
    if block_tables is None:
        return torch.arange(positions.shape[0], device=positions.device), positions
    index = (positions // block_size).long()[:, None]
    return block_tables.gather(1, index)[:, 0], positions % block_size


def rope_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  positions: torch.Tensor, *, q_out: torch.Tensor | None = None,
                  block_tables: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate q and k; write k and v at position positions[b] of request b; return rotated q.

    q: [batch, heads, dim]; k, v: [batch, kv_heads, dim]; cos, sin: [batch, dim]; positions:
    int [batch]; caches: [batch, kv_heads, max_ctx, dim], or with block_tables [batch,
    max_blocks] a block pool [blocks, kv_heads, block_size, dim].
    """
    blocks, offsets = cache_slots(positions, k_cache.shape[2], block_tables)
    heads = torch.arange(k_cache.shape[1], device=k_cache.device)[None, :]
    k_cache.index_put_((blocks[:, None], heads, offsets[:, None]),
                       apply_rope(k, cos, sin).to(k_cache.dtype))
    v_cache.index_put_((blocks[:, None], heads, offsets[:, None]), v.to(v_cache.dtype))
    q_rot = apply_rope(q, cos, sin)
    return q_rot if q_out is None else q_out.copy_(q_rot)


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v: [tokens, kv_heads, dim] into flat slots (block * block_size + offset) of the pools
    [blocks, kv_heads, block_size, dim]."""
    block_size = k_cache.shape[2]
    blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
    heads = torch.arange(k_cache.shape[1], device=k_cache.device)[None, :]
    k_cache.index_put_((blocks[:, None], heads, offsets[:, None]), k.to(k_cache.dtype))
    v_cache.index_put_((blocks[:, None], heads, offsets[:, None]), v.to(v_cache.dtype))


def gather_blocks(cache: torch.Tensor, block_tables: torch.Tensor,
                  context_lens: torch.Tensor) -> torch.Tensor:
    """A block pool read through block tables as a static cache [batch, kv_heads, max_blocks *
    block_size, dim]; table entries past a request's last block are read as block 0."""
    block_size = cache.shape[2]
    used = (context_lens[:, None] + block_size - 1) // block_size
    at = torch.arange(block_tables.shape[1], device=block_tables.device)[None, :]
    tables = torch.where(at < used, block_tables, 0).long()
    blocks = cache[tables]                                  # [batch, max_blocks, kv, bs, dim]
    batch, max_blocks, kv_heads, _, dim = blocks.shape
    return blocks.transpose(1, 2).reshape(batch, kv_heads, max_blocks * block_size, dim)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     context_lens: torch.Tensor, *, scale: float | None = None,
                     out: torch.Tensor | None = None, context_starts: torch.Tensor | None = None,
                     block_tables: torch.Tensor | None = None) -> torch.Tensor:
    """One decode step of attention, transformers' eager arithmetic over a masked cache.

    q: [batch, heads, dim]; caches: [batch, kv_heads, max_ctx, dim], or with block_tables
    [batch, max_blocks] block pools [blocks, kv_heads, block_size, dim]; context_lens int
    [batch] counts the current token, already written. Request b attends to positions
    [context_starts[b] (default 0), context_lens[b]); other positions weigh exactly 0 and their
    values are zeroed first, so whatever they hold never reaches the result.
    """
    if block_tables is not None:
        k_cache = gather_blocks(k_cache, block_tables, context_lens)
        v_cache = gather_blocks(v_cache, block_tables, context_lens)
    batch, heads, dim = q.shape
    kv_heads, max_ctx = k_cache.shape[1], k_cache.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    at = torch.arange(max_ctx, device=q.device)[None, :]
    pad = at >= context_lens[:, None]                               # [batch, ctx]
    if context_starts is not None:
        pad = pad | (at < context_starts[:, None])
    qg = q.view(batch, kv_heads, heads // kv_heads, dim)            # [b, kv, group, dim]
    scores = torch.matmul(qg, k_cache.transpose(2, 3)) * scale      # [b, kv, group, ctx]
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    values = v_cache.masked_fill(pad[:, None, :, None], 0)
    result = torch.matmul(probs, values).view(batch, heads, dim)
    return result if out is None else out.copy_(result)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      cu_seqlens: torch.Tensor, *, scale: float | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention within each packed prompt, transformers' eager arithmetic (K/V heads
    repeated per query head); q: [tokens, heads, dim], k, v: [tokens, kv_heads, dim],
    cu_seqlens: int [prompts + 1], prompt i being tokens [cu_seqlens[i], cu_seqlens[i + 1])."""
    heads, dim = q.shape[1], q.shape[2]
    group = heads // k.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    if out is None:
        out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for first, last in zip(bounds[:-1], bounds[1:]):
        n = last - first
        if n == 0:
            continue
        qs = q[first:last].transpose(0, 1)                              # [heads, n, dim]
        ks = k[first:last].transpose(0, 1).repeat_interleave(group, 0)
        vs = v[first:last].transpose(0, 1).repeat_interleave(group, 0)
        scores = torch.matmul(qs, ks.transpose(1, 2)) * scale           # [heads, n, n]
        above = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(above, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out[first:last] = torch.matmul(probs, vs).transpose(0, 1)
    return out
