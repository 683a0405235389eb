"""Float32 torch references for every kernel in `pipedecode.runtime.kernels`.

Each function computes in float32 and returns the dtype of its main input, so a test can
compare a Triton kernel with it and so the package has a fallback where Triton or CUDA is
absent. These are written for clarity, not speed (the attention reference loops over the
batch). Knows nothing of SM partitions.
"""

from __future__ import annotations

import math

import torch


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     context_lens: torch.Tensor, *, scale: float | None = None,
                     out: torch.Tensor | None = None,
                     context_starts: torch.Tensor | None = None) -> torch.Tensor:
    """One decode step of attention; q: [batch, heads, dim], caches: [batch, kv_heads, max_ctx, dim].

    Only positions [context_starts[b], context_lens[b]) of request b are read (starts: 0).
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    lens = context_lens.tolist()
    starts = [0] * batch if context_starts is None else context_starts.tolist()
    result = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for b in range(batch):
        n = int(lens[b])
        qf = q[b].float().view(num_kv_heads, group, head_dim)   # [kv_heads, group, dim]
        first = int(starts[b])
        kf = k_cache[b, :, first:n].float()                      # [kv_heads, n - first, dim]
        vf = v_cache[b, :, first:n].float()
        probs = torch.softmax(qf @ kf.transpose(1, 2) * scale, dim=-1)  # [kv_heads, group, n]
        result[b] = (probs @ vf).reshape(num_heads, head_dim)
    if out is None:
        return result.to(q.dtype)
    out.copy_(result)
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, *, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias); x: [tokens, k], weight: [n, k]."""
    y = x.float() @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    if out is None:
        return y.to(x.dtype)
    out.copy_(y)
    return out


def gate_up_silu(x: torch.Tensor, w_gate_up: torch.Tensor, *,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """silu(x @ w_gate.T) * (x @ w_up.T); w_gate_up: [2 * inter, k], gate rows first."""
    inter = w_gate_up.shape[0] // 2
    y = x.float() @ w_gate_up.float().t()                        # [tokens, 2 * inter]
    z = torch.nn.functional.silu(y[:, :inter]) * y[:, inter:]
    if out is None:
        return z.to(x.dtype)
    out.copy_(z)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    if out is None:
        return y.to(x.dtype)
    out.copy_(y)
    return out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF-style rotate-half RoPE in float32; x: [batch, heads, dim], cos/sin: [batch, dim]."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return xf * cos.float()[:, None, :] + rotated * sin.float()[:, None, :]


def rope_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  positions: torch.Tensor, *, q_out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate q and k, write k and v at positions[b] of each request's cache; return rotated q.

    q: [batch, heads, dim]; k, v: [batch, kv_heads, dim]; cos, sin: [batch, dim] (already taken
    at each request's position); caches: [batch, kv_heads, max_ctx, dim]; positions: int [batch].
    """
    q_rot = apply_rope(q, cos, sin)
    k_rot = apply_rope(k, cos, sin)
    for b, pos in enumerate(positions.tolist()):
        k_cache[b, :, int(pos)] = k_rot[b].to(k_cache.dtype)
        v_cache[b, :, int(pos)] = v[b].to(v_cache.dtype)
    if q_out is None:
        return q_rot.to(q.dtype)
    q_out.copy_(q_rot)
    return q_out
