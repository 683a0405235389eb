"""Prefill: run whole prompts through the packed weights and write their K/V into a cache.

Owns `prefill` (many prompts packed into one token batch, varlen: every GEMM over all tokens at
once through the KernelSet, causal attention within each prompt through `prefill_attention`,
K/V into the cache's slots through `write_kv`) and `prefill_request` (one prompt into one row of
a static-cache `DecodeStep`, through `prefill`: a static cache is a pool of one block per row).
The residual stream is float32 and each op rounds as in the decode step, so a float32 CPU
prefill equals transformers. A pipeline stage's weights (see step.py) hold its layers only: a
stage without the embedding starts from the residual stream it is given (`hidden`), one
without the LM head returns the residual stream instead of logits. Knows nothing of
partitions, schedules or graphs: prefill runs on the whole device, eagerly.
"""

from __future__ import annotations

from typing import Callable

import torch

from pipedecode.runtime.kernels.reference import apply_rope
from pipedecode.runtime.kv_cache import PagedKVCache, packed_positions
from pipedecode.runtime.ops import KernelSet
from pipedecode.runtime.weights import PackedWeights


def check_inputs(weights: PackedWeights, cache: PagedKVCache, token_ids: torch.Tensor,
                 cu_seqlens: torch.Tensor, slot_mapping: torch.Tensor) -> list[int]:
    """The host-side prompt bounds (one sync), after checking every input."""
    total = token_ids.shape[0] if token_ids.dim() == 1 else -1
    if total <= 0:
        raise ValueError(f"prefill: token_ids must be a non-empty int [tokens], got "
                         f"{tuple(token_ids.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype != torch.int32:
        raise ValueError(f"prefill: cu_seqlens must be int32 [prompts + 1], got "
                         f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    if slot_mapping.shape != (total,):
        raise ValueError(f"prefill: slot_mapping must be [{total}], got {tuple(slot_mapping.shape)}")
    bounds = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    if bounds[0] != 0 or bounds[-1] != total or min(lengths) <= 0:
        raise ValueError(f"prefill: cu_seqlens must rise strictly from 0 to {total} (every "
                         f"prompt non-empty), got {bounds}")
    if max(lengths) > weights.max_positions:
        raise ValueError(f"prefill: a prompt of {max(lengths)} tokens exceeds the RoPE table's "
                         f"{weights.max_positions} positions")
    low, high = slot_mapping.min().item(), slot_mapping.max().item()
    if low < 0 or high >= cache.num_slots:
        raise ValueError(f"prefill: slots must be in [0, {cache.num_slots}) (blocks x "
                         f"block_size), got [{low}, {high}]")
    return bounds


def _check_hidden(weights: PackedWeights, tokens: int, hidden: torch.Tensor | None) -> None:
    if (hidden is None) != (weights.embed.shape[0] > 0):
        raise ValueError("prefill: give `hidden` exactly when the weights have no embedding "
                         "(a pipeline stage after the first)")
    if hidden is not None and (hidden.shape != (tokens, weights.shape.hidden_size)
                               or hidden.dtype != torch.float32):
        raise ValueError(f"prefill: hidden must be float32 [{tokens}, "
                         f"{weights.shape.hidden_size}], got {hidden.dtype} "
                         f"{tuple(hidden.shape)}")


def prefill_buffers(weights: PackedWeights, tokens: int,
                    fill: Callable[..., torch.Tensor] = torch.empty) -> dict[str, torch.Tensor]:
    """The activations of a prefill of `tokens` tokens, [tokens, width] each; a prefill of
    fewer tokens may use their first rows."""
    shape, dt, dev = weights.shape, weights.dtype, weights.device
    q_dim = shape.num_heads * shape.head_dim
    inter = weights.layers[0].gate_up.shape[0] // 2
    sizes = {"h": shape.hidden_size, "tmp": shape.hidden_size, "attn": q_dim,
             "qkv": weights.layers[0].qkv.shape[0], "gate_up": 2 * inter, "act": inter}
    return {name: fill(tokens, n, dtype=dt, device=dev) for name, n in sizes.items()}


@torch.no_grad()
def prefill(weights: PackedWeights, cache: PagedKVCache, kernels: KernelSet,
            token_ids: torch.Tensor, cu_seqlens: torch.Tensor, slot_mapping: torch.Tensor, *,
            logits_rows: torch.Tensor | None = None,
            hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Prefill the prompts packed in token_ids (int [tokens]; prompt i is tokens
    [cu_seqlens[i], cu_seqlens[i + 1]), at positions 0, 1, ...) and write each token's K/V at
    its flat slot slot_mapping[t] (block * block_size + offset) of every layer.

    Returns logits [rows, vocab] of the token rows `logits_rows` (default: each prompt's last
    token, [prompts, vocab]); the next decode step of prompt i feeds its first generated token
    at context length len(prompt i) + 1. A pipeline stage without the embedding takes the
    residual stream `hidden` [tokens, hidden] float32 (updated in place); one without the LM
    head returns the residual stream [tokens, hidden] float32 after its layers.
    """
    bounds = check_inputs(weights, cache, token_ids, cu_seqlens, slot_mapping)
    _check_hidden(weights, token_ids.shape[0], hidden)
    dev = weights.device
    token_ids, cu_seqlens = token_ids.to(dev), cu_seqlens.to(dev)
    _, positions = packed_positions(cu_seqlens)
    if logits_rows is None:
        logits_rows = cu_seqlens[1:].long() - 1
    return prefill_forward(weights, cache, kernels, token_ids, cu_seqlens, slot_mapping.to(dev),
                           positions, max_seqlen=max(b - a for a, b in zip(bounds[:-1],
                                                                           bounds[1:])),
                           logits_rows=logits_rows.to(dev), hidden=hidden)


def prefill_forward(weights: PackedWeights, cache: PagedKVCache, kernels: KernelSet,
                    token_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                    slot_mapping: torch.Tensor, positions: torch.Tensor, *, max_seqlen: int,
                    logits_rows: torch.Tensor, hidden: torch.Tensor | None = None,
                    buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """`prefill` on inputs already on the device and checked: positions int64 [tokens] (each
    token's within its prompt), max_seqlen a host-side bound on the prompts' lengths,
    logits_rows the token rows whose logits to return. No host sync, so a CUDA graph can
    capture it. `buffers` (`prefill_buffers`, at least as many rows as tokens): the
    activations, reused; tokens past the last prompt's (cu_seqlens[-1]) are padding, computed
    row by row like the others and attended by none."""
    shape, eps = weights.shape, weights.rms_eps
    heads, kv_heads, dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
    q_dim, kv_dim = heads * dim, kv_heads * dim
    n = token_ids.shape[0]
    dev = weights.device
    cos, sin = weights.rope_cos[positions], weights.rope_sin[positions]     # [n, dim]
    buf = prefill_buffers(weights, n) if buffers is None else \
        {name: b[:n] for name, b in buffers.items()}
    # [n, hidden]: the float32 residual stream
    x = weights.embed[token_ids].float() if hidden is None else hidden.to(dev)
    for layer, lw in enumerate(weights.layers):
        kernels.rms_norm(x, lw.input_norm, eps, out=buf["h"])
        qkv = kernels.linear(buf["h"], lw.qkv, bias=lw.qkv_bias, out=buf["qkv"])
        q = apply_rope(qkv[:, :q_dim].view(n, heads, dim), cos, sin)
        k = apply_rope(qkv[:, q_dim:q_dim + kv_dim].view(n, kv_heads, dim), cos, sin)
        v = qkv[:, q_dim + kv_dim:].view(n, kv_heads, dim)
        kernels.write_kv(k, v, cache.k[layer], cache.v[layer], slot_mapping)
        kernels.prefill_attention(q, k, v, cu_seqlens, max_seqlen=max_seqlen,
                                  out=buf["attn"].view(n, heads, dim))
        kernels.linear_add(buf["attn"], lw.o_proj, out=x, scratch=buf["tmp"])
        kernels.rms_norm(x, lw.post_norm, eps, out=buf["h"])
        kernels.gate_up_silu(buf["h"], lw.gate_up, scratch=buf["gate_up"], out=buf["act"])
        kernels.linear_add(buf["act"], lw.down, out=x, scratch=buf["tmp"])
    if weights.lm_head.shape[0] == 0:       # a stage before the last: the residual stream
        return x
    last = x[logits_rows]
    h = kernels.rms_norm(last, weights.final_norm, eps,
                         out=torch.empty(last.shape, dtype=weights.dtype, device=dev))
    logits = torch.empty(last.shape[0], shape.vocab_size, dtype=weights.dtype, device=dev)
    return kernels.linear(h, weights.lm_head, out=logits)


@torch.no_grad()
def prefill_request(step, row: int, prompt: torch.Tensor) -> torch.Tensor:
    """Fill row `row` of a static-cache DecodeStep with `prompt` (int [tokens]); return the last
    token's logits [vocab]. The next decode step for this row then feeds the first generated
    token at context length len(prompt) + 1."""
    if step.paged:
        raise ValueError("prefill_request fills a row of a static cache; a paged step's cache "
                         "is filled by prefill() with the request's slots")
    n = int(prompt.numel())
    if not 0 < n < step.max_context:
        raise ValueError(f"prompt length must be in 1..{step.max_context - 1}, got {n}")
    if not 0 <= row < step.batch_size:
        raise ValueError(f"row must be in 0..{step.batch_size - 1}, got {row}")
    dev = step.weights.device
    slots = row * step.cache.block_size + torch.arange(n, device=dev)
    cu_seqlens = torch.tensor([0, n], dtype=torch.int32, device=dev)
    return prefill(step.weights, step.cache, step.kernels, prompt.reshape(-1).to(dev), cu_seqlens,
                   slots)[0]
