"""The kernel adapter: the handful of ops a decode step launches, behind one small interface.

Owns `KernelSet` and `kernel_set(name)`. "torch" is plain torch in the model's dtype, mirroring
transformers' eager arithmetic (so float32 CPU runs match it), graph-capturable (no host syncs,
writes into given buffers). "triton" takes the partition-aware kernels of
`pipedecode.runtime.kernels` where that package provides them and falls back to "torch" op by op
where it does not; "cublas" is "triton" with torch GEMMs; "hybrid" (the CUDA default) uses cuBLAS
GEMMs for whole-GPU calls and the Triton matmul for calls on a partition. Knows nothing of schedules, streams or micro-batches: callers pass `sm_count`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *,
                   out: torch.Tensor) -> torch.Tensor:
    """transformers' LlamaRMSNorm: float32 statistics, cast back, then scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    torch.mul(weight, xf.to(x.dtype), out=out)
    return out


def torch_linear(x: torch.Tensor, weight: torch.Tensor, *, bias: torch.Tensor | None = None,
                 out: torch.Tensor, sm_count: int | None = None) -> torch.Tensor:
    if bias is None:
        torch.matmul(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)
    return out


def torch_linear_add(x: torch.Tensor, weight: torch.Tensor, *, out: torch.Tensor,
                     scratch: torch.Tensor, sm_count: int | None = None) -> torch.Tensor:
    """out += x @ weight.T, as transformers does it: the GEMM rounded into scratch, then the
    residual add."""
    torch.matmul(x, weight.t(), out=scratch)
    return out.add_(scratch)


def cublas_linear_add(x: torch.Tensor, weight: torch.Tensor, *, out: torch.Tensor,
                      scratch: torch.Tensor, sm_count: int | None = None) -> torch.Tensor:
    """out += x @ weight.T in one cuBLAS call (beta = 1: the residual add in the GEMM's epilogue,
    rounded once, to out's dtype). A float32 out beside bf16/fp16 x (the step's residual
    stream) takes cuBLAS's float32 output on CUDA (torch's `out_dtype`); where torch has no
    such kernel (CPU) the product is rounded to x's dtype and then added, as transformers does."""
    if out.dtype == x.dtype:
        return out.addmm_(x, weight.t())
    if out.dtype == torch.float32 and x.is_cuda:
        return torch.addmm(out, x, weight.t(), out_dtype=torch.float32, out=out)
    return torch_linear_add(x, weight, out=out, scratch=scratch)


def torch_gate_up_silu(x: torch.Tensor, w_gate_up: torch.Tensor, *, scratch: torch.Tensor,
                       out: torch.Tensor, sm_count: int | None = None) -> torch.Tensor:
    """silu(x @ w_gate.T) * (x @ w_up.T); scratch: [tokens, 2 * inter]."""
    inter = out.shape[-1]
    torch.matmul(x, w_gate_up.t(), out=scratch)
    torch.mul(F.silu(scratch[:, :inter]), scratch[:, inter:], out=out)
    return out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def torch_rope_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                        sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        positions: torch.Tensor, rows: torch.Tensor, *,
                        q_out: torch.Tensor) -> torch.Tensor:
    """Rotate q, k (HF rotate-half, model dtype); write k, v at positions[b] of row b's cache.

    q: [batch, heads, dim]; k, v: [batch, kv_heads, dim]; cos/sin: [batch, dim];
    caches: [batch, kv_heads, max_ctx, dim]; rows: arange(batch) (static, so no host sync).
    """
    q_out.copy_(apply_rope(q, cos, sin))
    k_cache.index_put_((rows[:, None], _heads(k_cache), positions[:, None]), apply_rope(k, cos, sin))
    v_cache.index_put_((rows[:, None], _heads(v_cache), positions[:, None]), v)
    return q_out


def _heads(cache: torch.Tensor) -> torch.Tensor:
    return torch.arange(cache.shape[1], device=cache.device)[None, :]


def torch_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           context_lens: torch.Tensor, *, out: torch.Tensor,
                           sm_count: int | None = None, scale: float | None = None,
                           context_starts: torch.Tensor | None = None) -> torch.Tensor:
    """Masked attention over the whole static cache (reads padding; the Triton kernel does not).

    q: [batch, heads, dim]; caches: [batch, kv_heads, max_ctx, dim]; context_lens int [batch]
    counts the current token, already written; context_starts (optional, int [batch]): the first
    position attended (a left-padded cache).
    """
    batch, heads, dim = q.shape
    kv_heads, max_ctx = k_cache.shape[1], k_cache.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    qg = q.view(batch, kv_heads, heads // kv_heads, dim)            # [b, kv, group, dim]
    scores = torch.matmul(qg, k_cache.transpose(2, 3)) * scale      # [b, kv, group, ctx]
    at = torch.arange(max_ctx, device=q.device)[None, :]
    pad = at >= context_lens[:, None]
    if context_starts is not None:
        pad = pad | (at < context_starts[:, None])
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out.view(batch, kv_heads, heads // kv_heads, dim).copy_(torch.matmul(probs, v_cache))
    return out


@dataclass(frozen=True)
class KernelSet:
    """The ops one decode step calls; each writes into `out`/`q_out` and returns it."""

    name: str
    rms_norm: Callable[..., torch.Tensor]
    linear: Callable[..., torch.Tensor]
    gate_up_silu: Callable[..., torch.Tensor]
    rope_kv_write: Callable[..., torch.Tensor]
    decode_attention: Callable[..., torch.Tensor]
    linear_add: Callable[..., torch.Tensor]       # out += x @ W.T (the residual adds)
    provided: tuple[str, ...] = ()  # ops that come from pipedecode.runtime.kernels


TORCH_KERNELS = KernelSet("torch", torch_rms_norm, torch_linear, torch_gate_up_silu,
                          torch_rope_kv_write, torch_decode_attention, torch_linear_add)


def _kernels_module():
    try:
        return importlib.import_module("pipedecode.runtime.kernels")
    except Exception:  # noqa: BLE001 - a broken optional package means "not provided"
        return None


def triton_kernel_set() -> KernelSet:
    """The kernels package's partition-aware ops where present, torch op by op elsewhere."""
    mod = _kernels_module()
    have = {n for n in ("linear", "decode_attention", "gate_up_silu", "rms_norm",
                        "rope_kv_write") if mod is not None and hasattr(mod, n)}

    def lin(x, weight, *, bias=None, out, sm_count=None):
        return mod.linear(x, weight, bias=bias, out=out, sm_count=sm_count)

    def lin_add(x, weight, *, out, scratch, sm_count=None):
        # the add in the epilogue, rounded once to out's dtype (as cuBLAS's)
        return mod.linear(x, weight, out=out, sm_count=sm_count, accumulate=True)

    def att(q, k_cache, v_cache, context_lens, *, out, sm_count=None, scale=None,
            context_starts=None):
        return mod.decode_attention(q, k_cache, v_cache, context_lens, out=out,
                                    sm_count=sm_count, scale=scale, context_starts=context_starts)

    def gate_up(x, w_gate_up, *, scratch, out, sm_count=None):
        return mod.gate_up_silu(x, w_gate_up, out=out, sm_count=sm_count)

    def norm(x, weight, eps, *, out):
        return mod.rms_norm(x, weight, eps, out=out)

    def rope(q, k, v, cos, sin, k_cache, v_cache, positions, rows, *, q_out):
        return mod.rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions, q_out=q_out)

    pick = lambda name, fast, slow: fast if name in have else slow  # noqa: E731
    return KernelSet("triton", pick("rms_norm", norm, torch_rms_norm),
                     pick("linear", lin, torch_linear),
                     pick("gate_up_silu", gate_up, torch_gate_up_silu),
                     pick("rope_kv_write", rope, torch_rope_kv_write),
                     pick("decode_attention", att, torch_decode_attention),
                     pick("linear", lin_add, torch_linear_add), tuple(sorted(have)))


def cublas_kernel_set() -> KernelSet:
    """The kernels package's attention, RoPE and RMSNorm with torch (cuBLAS) GEMMs: the
    whole-GPU comparison for the partition-aware matmul. The residual adds ride in the GEMM
    (beta = 1) and gate/up's SiLU-and-multiply is one pass where the kernels package is there."""
    fast, mod = triton_kernel_set(), _kernels_module()
    gate_up = torch_gate_up_silu
    if mod is not None and "gate_up_silu" in fast.provided:
        def gate_up(x, w_gate_up, *, scratch, out, sm_count=None):
            return mod.gate_up_silu(x, w_gate_up, out=out, impl="cublas", scratch=scratch)
    return KernelSet("cublas", fast.rms_norm, torch_linear, gate_up, fast.rope_kv_write,
                     fast.decode_attention, cublas_linear_add,
                     tuple(n for n in fast.provided if n not in ("linear", "gate_up_silu")))


def hybrid_kernel_set() -> KernelSet:
    """GEMMs through cuBLAS on the whole GPU (sm_count None: measured faster there on the H100)
    and through the partition-aware Triton matmul on a partition; Triton for the other ops."""
    fast, blas = triton_kernel_set(), cublas_kernel_set()

    def lin(x, weight, *, bias=None, out, sm_count=None):
        pick = blas if sm_count is None else fast
        return pick.linear(x, weight, bias=bias, out=out, sm_count=sm_count)

    def gate_up(x, w_gate_up, *, scratch, out, sm_count=None):
        pick = blas if sm_count is None else fast
        return pick.gate_up_silu(x, w_gate_up, scratch=scratch, out=out, sm_count=sm_count)

    def lin_add(x, weight, *, out, scratch, sm_count=None):
        pick = blas if sm_count is None else fast
        return pick.linear_add(x, weight, out=out, scratch=scratch, sm_count=sm_count)

    return KernelSet("hybrid", fast.rms_norm, lin, gate_up, fast.rope_kv_write,
                     fast.decode_attention, lin_add, fast.provided)


def kernel_set(name: str = "auto", device: torch.device | str = "cpu") -> KernelSet:
    """"torch", "triton", "cublas", "hybrid", or "auto" (hybrid on CUDA, torch elsewhere)."""
    if name == "auto":
        name = "hybrid" if torch.device(device).type == "cuda" else "torch"
    if name == "hybrid":
        return hybrid_kernel_set()
    if name == "torch":
        return TORCH_KERNELS
    if name == "triton":
        return triton_kernel_set()
    if name == "cublas":
        return cublas_kernel_set()
    raise ValueError(f"kernel set must be 'auto', 'torch', 'triton', 'cublas' or 'hybrid', "
                     f"got {name!r}")
