"""The kernel adapter: the handful of ops a decode step launches, behind one small interface.

Owns `KernelSet` and `kernel_set(name)`. "torch" is the kernels' torch references
(`kernels.reference`): the model's dtype, mirroring transformers' eager arithmetic (so float32
CPU runs match it), graph-capturable but for the prefill attention (no host syncs, writes into
given buffers). "triton" takes the partition-aware kernels of `pipedecode.runtime.kernels`;
"cublas" is "triton" with torch GEMMs; "hybrid" (the CUDA default) uses cuBLAS GEMMs for
whole-GPU calls and the Triton matmul for calls on a partition. Every op that reads or writes
the KV cache takes an optional `block_tables` (a paged cache). The GEMM and attention ops take
`sm_count` and, in co-resident mode, a `lane` (`runtime.lane.Lane`): "triton", "cublas" and
"hybrid" then launch the persistent Triton matmul with a tile within the lane's budget
(`tiling.choose_config(budget=)`) and the persistent TMA attention within the lane's shared
memory, one program per SM; "torch" computes the same products wherever it is told. Knows
nothing of schedules, streams or micro-batches: callers pass `sm_count` or a lane.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from pipedecode.runtime.kernels import reference

# The "torch" set: the kernels' references behind the KernelSet's signatures (which also carry
# the SM count a Triton kernel plans for; a torch op has nothing to plan).


def torch_rms_norm(x, weight, eps, *, out):
    return reference.rms_norm(x, weight, eps, out=out)


def torch_linear(x, weight, *, bias=None, out, sm_count=None, lane=None):
    return reference.linear(x, weight, bias=bias, out=out)


def torch_linear_add(x, weight, *, out, scratch, sm_count=None, lane=None):
    return reference.linear_add(x, weight, out=out, scratch=scratch)


def torch_gate_up_silu(x, w_gate_up, *, scratch, out, sm_count=None, lane=None):
    return reference.gate_up_silu(x, w_gate_up, scratch=scratch, out=out)


def torch_rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions, *, q_out,
                        block_tables=None):
    return reference.rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions, q_out=q_out,
                                   block_tables=block_tables)


def torch_decode_attention(q, k_cache, v_cache, context_lens, *, out, sm_count=None, scale=None,
                           context_starts=None, block_tables=None, lane=None):
    """Masked attention over the whole cache (reads padding; the Triton kernel does not)."""
    return reference.decode_attention(q, k_cache, v_cache, context_lens, out=out, scale=scale,
                                      context_starts=context_starts, block_tables=block_tables)


def torch_write_kv(k, v, k_cache, v_cache, slot_mapping):
    return reference.write_kv(k, v, k_cache, v_cache, slot_mapping)


def torch_prefill_attention(q, k, v, cu_seqlens, *, max_seqlen, out, scale=None, sm_count=None):
    return reference.prefill_attention(q, k, v, cu_seqlens, scale=scale, out=out)


def cublas_linear_add(x: torch.Tensor, weight: torch.Tensor, *, out: torch.Tensor,
                      scratch: torch.Tensor, sm_count: int | None = None,
                      lane=None) -> torch.Tensor:
    """out += x @ weight.T in one cuBLAS call (beta = 1: the residual add in the GEMM's epilogue,
    rounded once, to out's dtype). A float32 out beside bf16/fp16 x (the step's residual
    stream) takes cuBLAS's float32 output on CUDA (torch's `out_dtype`); where torch has no
    such kernel (CPU) the product is rounded to x's dtype and then added, as transformers does."""
    if out.dtype == x.dtype:
        return out.addmm_(x, weight.t())
    if out.dtype == torch.float32 and x.is_cuda:
        return torch.addmm(out, x, weight.t(), out_dtype=torch.float32, out=out)
    return torch_linear_add(x, weight, out=out, scratch=scratch)


@dataclass(frozen=True)
class KernelSet:
    """The ops a decode step and a prefill call; each writes into `out`/`q_out` and returns it."""

    name: str
    rms_norm: Callable[..., torch.Tensor]
    linear: Callable[..., torch.Tensor]
    gate_up_silu: Callable[..., torch.Tensor]
    rope_kv_write: Callable[..., torch.Tensor]
    decode_attention: Callable[..., torch.Tensor]
    linear_add: Callable[..., torch.Tensor]       # out += x @ W.T (the residual adds)
    write_kv: Callable[..., None]                 # prefill: K/V of many tokens into slots
    prefill_attention: Callable[..., torch.Tensor]
    provided: tuple[str, ...] = ()  # ops that come from pipedecode.runtime.kernels


TORCH_KERNELS = KernelSet("torch", rms_norm=torch_rms_norm, linear=torch_linear,
                          gate_up_silu=torch_gate_up_silu, rope_kv_write=torch_rope_kv_write,
                          decode_attention=torch_decode_attention, linear_add=torch_linear_add,
                          write_kv=torch_write_kv, prefill_attention=torch_prefill_attention)


def coresident_gemm(lane, m: int, n: int, k: int, pair: bool = False) -> dict:
    """The matmul's launch arguments in a lane: {} outside co-resident mode, else the Triton
    path with the tile chosen within the lane's budget, on the lane's SMs."""
    if lane is None or not lane.coresident:
        return {}
    from pipedecode.runtime.kernels.tiling import choose_config

    return {"impl": "triton", "sm_count": lane.sm_count,
            "config": choose_config(m, n, k, lane.sm_count, pair=pair, budget=lane.tile_budget)}


def coresident_attention(lane) -> dict:
    """The attention's launch arguments in a lane: {} outside co-resident mode, else the TMA
    kernel within the lane's shared memory, one persistent program per SM."""
    if lane is None or not lane.coresident:
        return {}
    return {"sm_count": lane.sm_count, "smem_budget_bytes": lane.smem_bytes,
            "num_ctas": lane.sm_count}


def triton_kernel_set() -> KernelSet:
    """The partition-aware ops of `pipedecode.runtime.kernels` (each runs its torch reference
    where Triton cannot run: no triton, or CPU tensors without the interpreter)."""
    mod = importlib.import_module("pipedecode.runtime.kernels")

    def lin(x, weight, *, bias=None, out, sm_count=None, lane=None):
        where = {"sm_count": sm_count, **coresident_gemm(lane, x.shape[0], *weight.shape)}
        return mod.linear(x, weight, bias=bias, out=out, **where)

    def lin_add(x, weight, *, out, scratch, sm_count=None, lane=None):
        # the add in the epilogue, rounded once to out's dtype (as cuBLAS's)
        where = {"sm_count": sm_count, **coresident_gemm(lane, x.shape[0], *weight.shape)}
        return mod.linear(x, weight, out=out, accumulate=True, **where)

    def att(q, k_cache, v_cache, context_lens, *, out, sm_count=None, scale=None,
            context_starts=None, block_tables=None, lane=None):
        where = {"sm_count": sm_count, **coresident_attention(lane)}
        return mod.decode_attention(q, k_cache, v_cache, context_lens, out=out, scale=scale,
                                    context_starts=context_starts, block_tables=block_tables,
                                    **where)

    def gate_up(x, w_gate_up, *, scratch, out, sm_count=None, lane=None):
        where = {"sm_count": sm_count, **coresident_gemm(lane, x.shape[0], w_gate_up.shape[0]
                                                         // 2, x.shape[1], pair=True)}
        return mod.gate_up_silu(x, w_gate_up, out=out, **where)

    def norm(x, weight, eps, *, out):
        return mod.rms_norm(x, weight, eps, out=out)

    def rope(q, k, v, cos, sin, k_cache, v_cache, positions, *, q_out, block_tables=None):
        return mod.rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions, q_out=q_out,
                                 block_tables=block_tables)

    def prefill_att(q, k, v, cu_seqlens, *, max_seqlen, out, scale=None, sm_count=None):
        return mod.prefill_attention(q, k, v, cu_seqlens, max_seqlen=max_seqlen, out=out,
                                     scale=scale, sm_count=sm_count)

    return KernelSet("triton", rms_norm=norm, linear=lin, gate_up_silu=gate_up,
                     rope_kv_write=rope, decode_attention=att, linear_add=lin_add,
                     write_kv=mod.write_kv, prefill_attention=prefill_att,
                     provided=("decode_attention", "gate_up_silu", "linear", "prefill_attention",
                               "rms_norm", "rope_kv_write", "write_kv"))


def cublas_kernel_set() -> KernelSet:
    """The kernels package's attention, RoPE and RMSNorm with torch (cuBLAS) GEMMs: the
    whole-GPU comparison for the partition-aware matmul. The residual adds ride in the GEMM
    (beta = 1) and gate/up's SiLU-and-multiply is one pass."""
    fast = triton_kernel_set()
    mod = importlib.import_module("pipedecode.runtime.kernels")

    def gate_up(x, w_gate_up, *, scratch, out, sm_count=None, lane=None):
        if lane is not None and lane.coresident:
            return fast.gate_up_silu(x, w_gate_up, scratch=scratch, out=out, lane=lane)
        return mod.gate_up_silu(x, w_gate_up, out=out, impl="cublas", scratch=scratch)

    def lin(x, weight, *, bias=None, out, sm_count=None, lane=None):
        if lane is not None and lane.coresident:
            return fast.linear(x, weight, bias=bias, out=out, lane=lane)
        return torch_linear(x, weight, bias=bias, out=out)

    def lin_add(x, weight, *, out, scratch, sm_count=None, lane=None):
        if lane is not None and lane.coresident:
            return fast.linear_add(x, weight, out=out, scratch=scratch, lane=lane)
        return cublas_linear_add(x, weight, out=out, scratch=scratch)

    return dataclasses.replace(
        fast, name="cublas", linear=lin, gate_up_silu=gate_up, linear_add=lin_add,
        provided=tuple(n for n in fast.provided if n not in ("linear", "gate_up_silu")))


def hybrid_kernel_set() -> KernelSet:
    """GEMMs through cuBLAS on the whole GPU (sm_count None: measured faster there on the H100)
    and through the partition-aware Triton matmul on a partition and in a co-resident lane;
    Triton for the other ops."""
    fast, blas = triton_kernel_set(), cublas_kernel_set()

    def _pick(sm_count, lane) -> KernelSet:
        return blas if sm_count is None and (lane is None or not lane.coresident) else fast

    def lin(x, weight, *, bias=None, out, sm_count=None, lane=None):
        return _pick(sm_count, lane).linear(x, weight, bias=bias, out=out, sm_count=sm_count,
                                            lane=lane)

    def gate_up(x, w_gate_up, *, scratch, out, sm_count=None, lane=None):
        return _pick(sm_count, lane).gate_up_silu(x, w_gate_up, scratch=scratch, out=out,
                                                  sm_count=sm_count, lane=lane)

    def lin_add(x, weight, *, out, scratch, sm_count=None, lane=None):
        return _pick(sm_count, lane).linear_add(x, weight, out=out, scratch=scratch,
                                                sm_count=sm_count, lane=lane)

    return dataclasses.replace(fast, name="hybrid", linear=lin, gate_up_silu=gate_up,
                               linear_add=lin_add)


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
