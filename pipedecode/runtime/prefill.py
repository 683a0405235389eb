"""Prefill: run one request's whole prompt through the packed weights and fill its cache row.

Owns `prefill_request`, plain torch on the whole device (causal SDPA over the prompt, the same
RMSNorm/RoPE arithmetic as the decode step), writing K/V into one row of a `DecodeStep`'s static
cache. Knows nothing of partitions, schedules or graphs: prefill is not what pipedecode overlaps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipedecode.runtime.ops import apply_rope
from pipedecode.runtime.step import DecodeStep


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: the float32 residual stream; the result is in the weights' dtype, as the step's."""
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * normed).to(weight.dtype)


@torch.no_grad()
def prefill_request(step: DecodeStep, row: int, prompt: torch.Tensor) -> torch.Tensor:
    """Fill cache row `row` with `prompt` (int [tokens]); return the last token's logits [vocab].

    The next decode step for this row then feeds the first generated token at context length
    len(prompt) + 1.
    """
    w = step.weights
    n = int(prompt.numel())
    if not 0 < n < step.max_context:
        raise ValueError(f"prompt length must be in 1..{step.max_context - 1}, got {n}")
    if not 0 <= row < step.batch_size:
        raise ValueError(f"row must be in 0..{step.batch_size - 1}, got {row}")
    heads, kv_heads, dim = step.num_heads, step.num_kv_heads, step.head_dim
    prompt = prompt.to(w.device)
    x = w.embed[prompt].float()                               # [n, hidden], float32 residual
    cos, sin = w.rope_cos[:n], w.rope_sin[:n]                 # [n, dim]
    for layer, lw in enumerate(w.layers):
        h = _rms_norm(x, lw.input_norm, step.eps)
        qkv = F.linear(h, lw.qkv, lw.qkv_bias)
        q = apply_rope(qkv[:, :step.q_dim].view(n, heads, dim), cos, sin)
        k = apply_rope(qkv[:, step.q_dim:step.q_dim + step.kv_dim].view(n, kv_heads, dim), cos, sin)
        v = qkv[:, step.q_dim + step.kv_dim:].view(n, kv_heads, dim)
        step.k_cache[layer][row, :, :n] = k.transpose(0, 1)
        step.v_cache[layer][row, :, :n] = v.transpose(0, 1)
        group = heads // kv_heads
        attn = F.scaled_dot_product_attention(                # [heads, n, dim]
            q.transpose(0, 1), k.transpose(0, 1).repeat_interleave(group, 0),
            v.transpose(0, 1).repeat_interleave(group, 0), is_causal=True)
        x = x + F.linear(attn.transpose(0, 1).reshape(n, step.q_dim), lw.o_proj)
        h = _rms_norm(x, lw.post_norm, step.eps)
        gate_up = F.linear(h, lw.gate_up)
        inter = gate_up.shape[-1] // 2
        x = x + F.linear(F.silu(gate_up[:, :inter]) * gate_up[:, inter:], lw.down)
    return F.linear(_rms_norm(x[-1:], w.final_norm, step.eps), w.lm_head)[0]
