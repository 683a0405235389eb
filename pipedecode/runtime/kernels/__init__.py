"""Partition-aware decode and prefill kernels: Triton fast paths, torch references as fallback.

Public functions (all keyword arguments after the tensors are keyword-only; bf16 tensors on one
CUDA device, or CPU tensors with TRITON_INTERPRET=1 for the Triton interpreter). A KV cache is
either static, [batch, num_kv_heads, max_context, head_dim], or paged: per layer a block pool
[num_blocks, num_kv_heads, block_size, head_dim] with `block_tables` int32 [batch, max_blocks],
request b's position p in block block_tables[b, p // block_size] at offset p % block_size.

- `decode_attention(q, k_cache, v_cache, context_lens, *, sm_count=None, scale=None, out=None,
  max_context_len=None, context_starts=None, block_tables=None, impl="auto") -> out`
  (impl: the TMA kernel on Hopper where it runs, else the Triton split-KV kernel; see below)
  q: [batch, num_heads, head_dim]; k_cache, v_cache: a static or (with block_tables) a paged
  cache (last dim contiguous; positions >= context_lens[b] are never read); context_lens:
  int32 [batch], >= 1, counting the current token (already written); context_starts: optional
  int32 [batch], the first position to attend (a left-padded static cache), default 0; out:
  [batch, num_heads, head_dim]. MHA and GQA. Split-KV: the split count is chosen so batch x
  kv_heads x splits fills `sm_count` SMs (None = the whole GPU). `max_context_len` is an
  optional host-side upper bound on context_lens (default: the cache capacity), used only to
  size the splits; it never syncs.
- `linear(x, weight, *, bias=None, sm_count=None, out=None, impl="auto") -> out`:
  x @ weight.T (+ bias); x: [tokens, k], weight: [n, k], bias: [n]. Two paths: a persistent
  Triton matmul whose grid is the SM count, tiles, split-K and a split tail (the last partial
  wave's tiles cut into K chunks) from `tiling.choose_config(tokens, n, k, sm_count)`, and
  cuBLAS. impl="auto" takes the one measured
  faster at that (tokens, n, k, sm_count) on this GPU (`dispatch`); "triton"/"cublas" force one.
- `gate_up_silu(x, w_gate_up, *, sm_count=None, out=None, impl="auto") -> out`:
  silu(x @ w_gate.T) * (x @ w_up.T); w_gate_up: [2 * inter, k] with the gate rows first;
  out: [tokens, inter]. Triton: one fused pass; cuBLAS: GEMM, then silu * up in torch.
- `rms_norm(x, weight, eps=1e-6, *, out=None) -> out`: x: [rows, hidden], weight: [hidden].
- `rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions, *, q_out=None,
  block_tables=None) -> q_out`: rotate-half RoPE on q [batch, heads, dim] and k [batch,
  kv_heads, dim] with cos/sin [batch, dim] (taken at each request's position), writes rotated
  k and v into the caches at positions[b] (int32 [batch]; through the tables on the device
  when paged) and returns the rotated q.
- `write_kv(k, v, k_cache, v_cache, slot_mapping)`: the prefill's K/V, [tokens, kv_heads,
  head_dim], into a block pool at flat slots (block * block_size + offset).
- `prefill_attention(q, k, v, cu_seqlens, *, max_seqlen, scale=None, out=None, sm_count=None)
  -> out`: causal flash attention within each prompt packed in q [tokens, heads, dim], k, v
  [tokens, kv_heads, dim], prompt i being tokens [cu_seqlens[i], cu_seqlens[i + 1]).

`backend()` says which path runs ("triton" or "reference"). Triton is imported lazily: this
package imports without triton and without CUDA, and falls back to `reference` there.
Not fused (yet): RMSNorm into the following GEMM.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import warnings

import torch

from pipedecode.runtime.kernels import reference
from pipedecode.runtime.kernels.tiling import MatmulConfig, choose_config

__all__ = ["decode_attention", "attention_tma_unavailable", "linear", "gate_up_silu", "rms_norm", "rope_kv_write",
           "write_kv", "prefill_attention", "backend", "device_sm_count", "reference", "MatmulConfig", "choose_config"]


@functools.lru_cache(maxsize=1)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _use_triton(t: torch.Tensor) -> bool:
    if not _triton_installed():
        return False
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def backend(t: torch.Tensor) -> str:
    """'triton' where the Triton kernels run for tensors like t, else 'reference'."""
    return "triton" if _use_triton(t) else "reference"


def device_sm_count(device: torch.device | str | int | None = None) -> int:
    """Multiprocessors of a CUDA device; 132 (an H100/H200) for CPU tensors in the interpreter."""
    if isinstance(device, torch.device) and device.type != "cuda" or not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def _check_sm_count(sm_count: int | None, t: torch.Tensor) -> int:
    if sm_count is None:
        return device_sm_count(t.device)
    if int(sm_count) <= 0:
        raise ValueError(f"sm_count must be positive, got {sm_count}")
    return int(sm_count)


ATTENTION_IMPLS = ("auto", "tma", "triton")


def decode_attention(q, k_cache, v_cache, context_lens, *, sm_count=None, scale=None, out=None,
                     max_context_len=None, config=None, context_starts=None, locks=None,
                     block_tables=None, impl: str = "auto", smem_budget_bytes=None,
                     num_ctas=None):
    """Decode attention over each request's first context_lens[b] cache positions.

    impl: "auto" takes the TMA kernel (`_attention_tma`, Gluon: bulk copies into an mbarrier
    ring, wgmma) where it runs (a Hopper GPU, bf16/fp16, head_dim 64 or 128) and the Triton
    split-KV kernel elsewhere, warning once on a GPU with the reason (measured on an H200,
    benchmarks/results/attention_tma_h200.md: 0.62-0.70x the Triton kernel's time on 16-32 SMs,
    0.84-1.00x on the whole GPU); "tma" raises where it cannot run; "triton" forces the Triton
    kernel (as `config` and `locks`, which are the Triton kernel's launch options, do).

    `block_tables` (int32 [batch, max_blocks]): the caches are block pools [blocks, kv_heads,
    block_size, head_dim] and request b's position p is in block block_tables[b, p //
    block_size]; the key block of the launch shape is fitted to the block size (`_attention.
    fit_block`). `config` (an `_attention.AttentionConfig`) overrides the launch shape (tests,
    benchmarks). `locks`: zeroed int32 counters for a fused combine (see
    `_attention.decode_attention`). `smem_budget_bytes` and `num_ctas` (co-resident mode: a
    persistent grid within a shared-memory budget) go to the TMA kernel, and need it.
    """
    _check_decode_attention(q, k_cache, v_cache, context_lens, context_starts, block_tables)
    head_dim = q.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    sms = _check_sm_count(sm_count, q)
    if out is None:
        out = torch.empty_like(q)
    if not _use_triton(q):
        return reference.decode_attention(q, k_cache, v_cache, context_lens, scale=scale, out=out,
                                          context_starts=context_starts,
                                          block_tables=block_tables)
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1 or out.stride(2) != 1:
        raise ValueError("decode_attention: the last dimension of q, the caches and out must be "
                         "contiguous")
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"decode_attention: impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    from pipedecode.runtime.kernels import _attention

    capacity = k_cache.shape[2] if block_tables is None else \
        block_tables.shape[1] * k_cache.shape[2]
    max_ctx = capacity if max_context_len is None else int(max_context_len)
    if smem_budget_bytes is not None or num_ctas is not None:
        if impl == "triton" or config is not None or locks is not None:
            raise ValueError("decode_attention: smem_budget_bytes and num_ctas are the TMA "
                             "kernel's; they exclude impl='triton', config and locks")
        impl = "tma"
    if impl == "tma" or (impl == "auto" and config is None and locks is None):
        why = attention_tma_unavailable(q, k_cache, v_cache, context_lens, out, block_tables,
                                        context_starts)
        if why is None or impl == "tma":
            from pipedecode.runtime.kernels._attention_tma import decode_attention_tma

            return decode_attention_tma(q, k_cache, v_cache, context_lens, out=out,
                                        block_tables=block_tables, context_starts=context_starts,
                                        sm_count=sms, scale=scale, max_context_len=max_ctx,
                                        smem_budget_bytes=smem_budget_bytes, num_ctas=num_ctas)
        if q.is_cuda:
            _warn_once(f"decode attention runs the Triton split-KV kernel, not the TMA kernel: "
                       f"{why}")
    cfg = config or _attention.choose_config(sms, head_dim, k_cache.element_size())
    if block_tables is not None and config is None:
        cfg = _attention.fit_block(cfg, k_cache.shape[2])
    return _attention.decode_attention(
        q, k_cache, v_cache, context_lens, out, sm_count=sms, scale=scale,
        max_context=max(1, min(max_ctx, capacity)), cfg=cfg, context_starts=context_starts,
        locks=locks, block_tables=block_tables)


def attention_tma_unavailable(q, k_cache, v_cache, context_lens, out, block_tables=None,
                              context_starts=None) -> str | None:
    """Why the TMA decode attention cannot take these (valid) inputs here, or None."""
    from pipedecode.runtime.kernels import _attention_tma

    try:
        geom = _attention_tma.cache_geometry(q, k_cache, v_cache, context_lens, out,
                                             block_tables, context_starts, None)
    except ValueError as exc:
        return str(exc)
    return _attention_tma._unsupported(q, k_cache, geom)


@functools.lru_cache(maxsize=32)
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _check_decode_attention(q, k_cache, v_cache, context_lens, context_starts, block_tables):
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"decode_attention: q must be [batch, heads, dim] and the caches "
                         f"[batch or blocks, kv_heads, positions, dim]; got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    batch, num_heads, head_dim = q.shape
    rows_ok = block_tables is not None or k_cache.shape[0] == batch
    if not rows_ok or k_cache.shape[3] != head_dim or num_heads % k_cache.shape[1]:
        raise ValueError(f"decode_attention: cache {tuple(k_cache.shape)} does not fit q "
                         f"{tuple(q.shape)} (heads must be a multiple of kv heads)")
    if context_lens.shape != (batch,):
        raise ValueError(f"decode_attention: context_lens must be [{batch}], got "
                         f"{tuple(context_lens.shape)}")
    if context_starts is not None and context_starts.shape != (batch,):
        raise ValueError(f"decode_attention: context_starts must be [{batch}], got "
                         f"{tuple(context_starts.shape)}")
    if block_tables is not None:
        _check_block_tables(block_tables, batch, "decode_attention")
        if context_starts is not None:
            raise ValueError("decode_attention: context_starts (a left-padded static cache) "
                             "and block_tables (a paged cache) exclude each other")
    if head_dim & (head_dim - 1) or head_dim < 16:
        raise ValueError(f"decode_attention: head_dim must be a power of two >= 16, got {head_dim}")


def _check_block_tables(block_tables, batch: int, name: str) -> None:
    if block_tables.dim() != 2 or block_tables.shape[0] != batch or \
            block_tables.dtype != torch.int32:
        raise ValueError(f"{name}: block_tables must be int32 [{batch}, max_blocks], got "
                         f"{block_tables.dtype} {tuple(block_tables.shape)}")
    if block_tables.shape[1] == 0 or block_tables.stride(1) != 1:
        raise ValueError(f"{name}: block_tables needs at least one column, contiguous along "
                         f"the row, got shape {tuple(block_tables.shape)} strides "
                         f"{block_tables.stride()}")


def _check_linear(x, weight, n_out, out, name):
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"{name}: x must be [tokens, k] and weight [n, k]; got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if out is not None and tuple(out.shape) != (x.shape[0], n_out):
        raise ValueError(f"{name}: out must be [{x.shape[0]}, {n_out}], got {tuple(out.shape)}")


def _contiguous_rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@functools.lru_cache(maxsize=16)
def _device_key(index: int) -> str | None:
    from pipedecode.runtime.kernels.dispatch import device_key

    return device_key(torch.cuda.get_device_name(index))


def _gemm_path(x, n: int, sms: int, impl: str, config) -> str:
    """'triton', 'cublas' or 'reference' for y[m, n] = x[m, k] @ w^T on sms SMs."""
    if impl not in ("auto", "triton", "cublas"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'cublas', got {impl!r}")
    if not x.is_cuda:
        return "triton" if _use_triton(x) and impl != "cublas" else "reference"
    if config is not None or impl == "triton":
        return "triton" if _triton_installed() else "cublas"
    if impl == "cublas" or not _triton_installed():
        return "cublas"
    from pipedecode.runtime.kernels.dispatch import prefer_triton

    key = _device_key(x.device.index if x.device.index is not None else torch.cuda.current_device())
    return "triton" if prefer_triton(key, x.shape[0], n, x.shape[1], sms) else "cublas"


def linear(x, weight, *, bias=None, sm_count=None, out=None, impl: str = "auto",
           config: MatmulConfig | None = None, accumulate: bool = False):
    """x @ weight.T (+ bias) on sm_count SMs; with accumulate, out += that, rounded once (the
    residual add in the GEMM's epilogue; cuBLAS: beta = 1).

    impl: "auto" (the faster of cuBLAS and the Triton matmul where measured, see `dispatch`),
    "triton" or "cublas"; `config` forces the Triton matmul with that tile (benchmarks).
    """
    if accumulate and out is None:
        raise ValueError("linear: accumulate needs out (what the product is added to)")
    _check_linear(x, weight, weight.shape[0], out, "linear")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    sms = _check_sm_count(sm_count, x)
    if out is None:
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    path = _gemm_path(x, weight.shape[0], sms, impl, config)
    if path == "reference":
        if accumulate:     # the float32 product, added and rounded once
            product = reference.linear(x.float(), weight.float(),
                                       bias=None if bias is None else bias.float())
            return out.copy_(out.float() + product)
        return reference.linear(x, weight, bias=bias, out=out)
    if path == "cublas":
        if accumulate:
            if out.dtype == x.dtype:
                out.addmm_(x, weight.t())
            else:      # a wider residual (float32): cuBLAS's float32 output, added once
                torch.addmm(out, x, weight.t(), out_dtype=out.dtype, out=out)
            return out if bias is None else out.add_(bias)
        if bias is None:
            return torch.matmul(x, weight.t(), out=out)
        return torch.addmm(bias, x, weight.t(), out=out)
    from pipedecode.runtime.kernels import _matmul

    m, k = x.shape
    cfg = config or choose_config(m, weight.shape[0], k, sms)
    return _matmul.matmul(_contiguous_rows(x), _contiguous_rows(weight), out, bias, cfg, sms,
                          pair=False, accumulate=accumulate)


def gate_up_silu(x, w_gate_up, *, sm_count=None, out=None, impl: str = "auto",
                 config: MatmulConfig | None = None, scratch=None):
    """silu(x @ w_gate.T) * (x @ w_up.T) with w_gate_up = [w_gate; w_up].

    The Triton path is one fused pass; the cuBLAS path (chosen as for `linear` on the
    [tokens, 2 * inter] product) is a GEMM into `scratch` ([tokens, 2 * inter], allocated when
    not given) then one SiLU-and-multiply pass.
    """
    if w_gate_up.shape[0] % 2:
        raise ValueError(f"gate_up_silu: w_gate_up must have an even number of rows, got "
                         f"{w_gate_up.shape[0]}")
    inter = w_gate_up.shape[0] // 2
    _check_linear(x, w_gate_up, inter, out, "gate_up_silu")
    sms = _check_sm_count(sm_count, x)
    if out is None:
        out = torch.empty((x.shape[0], inter), dtype=x.dtype, device=x.device)
    path = _gemm_path(x, 2 * inter, sms, impl, config)
    if path == "reference":
        return reference.gate_up_silu(x, w_gate_up, out=out)
    if path == "cublas":
        if scratch is not None and (tuple(scratch.shape) != (x.shape[0], 2 * inter)
                                    or scratch.dtype != x.dtype):
            raise ValueError(f"gate_up_silu: scratch must be [{x.shape[0]}, {2 * inter}] "
                             f"{x.dtype}, got {tuple(scratch.shape)} {scratch.dtype}")
        both = torch.matmul(x, w_gate_up.t(), out=scratch)        # [tokens, 2 * inter]
        if not _use_triton(x) or both.stride(1) != 1 or out.stride(1) != 1:
            return torch.mul(torch.nn.functional.silu(both[:, :inter]), both[:, inter:], out=out)
        from pipedecode.runtime.kernels import _elementwise

        return _elementwise.silu_mul(both, out)
    from pipedecode.runtime.kernels import _matmul

    cfg = config or choose_config(x.shape[0], inter, x.shape[1], sms, pair=True)
    return _matmul.matmul(_contiguous_rows(x), _contiguous_rows(w_gate_up), out, None, cfg, sms,
                          pair=True)


def rms_norm(x, weight, eps=1e-6, *, out=None):
    """RMSNorm over the last dimension of a 2-D x."""
    if x.dim() != 2 or tuple(weight.shape) != (x.shape[1],):
        raise ValueError(f"rms_norm: x must be [rows, hidden] and weight [hidden]; got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if out is None:
        out = torch.empty_like(x)
    if not _use_triton(x):
        return reference.rms_norm(x, weight, eps, out=out)
    from pipedecode.runtime.kernels import _elementwise

    return _elementwise.rms_norm(_contiguous_rows(x), weight.contiguous(), float(eps), out)


def rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions, *, q_out=None,
                  block_tables=None):
    """Rotate q and k, write k and v into the caches at positions[b]; return the rotated q.

    With `block_tables` (int32 [batch, max_blocks]) the caches are block pools [blocks,
    kv_heads, block_size, head_dim] and positions[b] is written to block block_tables[b,
    positions[b] // block_size] (looked up on the device: no host sync, graph-capturable)."""
    batch, num_heads, head_dim = q.shape
    if k.dim() != 3 or k.shape != v.shape or k.shape[0] != batch or k.shape[2] != head_dim:
        raise ValueError(f"rope_kv_write: k and v must be [batch, kv_heads, {head_dim}], got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if cos.shape != (batch, head_dim) or sin.shape != cos.shape or positions.shape != (batch,):
        raise ValueError("rope_kv_write: cos and sin must be [batch, head_dim] and positions [batch]")
    if head_dim % 2 or (head_dim // 2) & (head_dim // 2 - 1):
        raise ValueError(f"rope_kv_write: head_dim must be twice a power of two, got {head_dim}")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape or \
            tuple(k_cache.shape[1::2]) != (k.shape[1], head_dim):
        raise ValueError(f"rope_kv_write: the caches must be [batch or blocks, {k.shape[1]}, "
                         f"positions, {head_dim}], got {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    if block_tables is not None:
        _check_block_tables(block_tables, batch, "rope_kv_write")
    elif k_cache.shape[0] != batch:
        raise ValueError(f"rope_kv_write: a static cache has one row per request ({batch}), "
                         f"got {k_cache.shape[0]}; pass block_tables for a block pool")
    if q_out is None:
        q_out = torch.empty_like(q)
    if not _use_triton(q):
        return reference.rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions,
                                       q_out=q_out, block_tables=block_tables)
    if any(t.stride(-1) != 1 for t in (q, k, v, cos, sin, k_cache, v_cache, q_out)):
        raise ValueError("rope_kv_write: the last dimension of every tensor must be contiguous")
    from pipedecode.runtime.kernels import _elementwise

    return _elementwise.rope_kv_write(q, k, v, cos, sin, k_cache, v_cache, positions, q_out,
                                      block_tables)


def write_kv(k, v, k_cache, v_cache, slot_mapping):
    """Write k and v ([tokens, kv_heads, head_dim]) into the block pools ([blocks, kv_heads,
    block_size, head_dim]) at flat slots slot_mapping[t] = block * block_size + offset (int
    [tokens], each in [0, blocks * block_size): not checked here, that would sync)."""
    if k.dim() != 3 or v.shape != k.shape or slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"write_kv: k and v must be [tokens, kv_heads, head_dim] and "
                         f"slot_mapping [tokens]; got {tuple(k.shape)}, {tuple(v.shape)}, "
                         f"{tuple(slot_mapping.shape)}")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape or \
            tuple(k_cache.shape[1::2]) != tuple(k.shape[1:]):
        raise ValueError(f"write_kv: the pools must be [blocks, {k.shape[1]}, block_size, "
                         f"{k.shape[2]}], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"write_kv: slot_mapping must be int32 or int64, got {slot_mapping.dtype}")
    head_dim = k.shape[2]
    if head_dim & (head_dim - 1):
        raise ValueError(f"write_kv: head_dim must be a power of two, got {head_dim}")
    if not _use_triton(k):
        return reference.write_kv(k, v, k_cache, v_cache, slot_mapping)
    if any(t.stride(-1) != 1 for t in (k, v, k_cache, v_cache)):
        raise ValueError("write_kv: the last dimension of every tensor must be contiguous")
    from pipedecode.runtime.kernels import _elementwise

    _elementwise.write_kv(k, v, k_cache, v_cache, slot_mapping)


def prefill_attention(q, k, v, cu_seqlens, *, max_seqlen, scale=None, out=None, sm_count=None,
                      config=None):
    """Causal attention within each of the prompts packed in q, k, v.

    q: [tokens, heads, head_dim]; k, v: [tokens, kv_heads, head_dim] (heads a multiple of
    kv_heads); cu_seqlens: int32 [prompts + 1], prompt i being tokens [cu_seqlens[i],
    cu_seqlens[i + 1]); max_seqlen: a host-side bound on the prompts' lengths (sizes the grid,
    no sync). The grid covers every (query tile, head, prompt), so it is not sized by
    `sm_count`: that only picks the launch shape (`_prefill_attention.choose_config`); a
    partition runs the same grid in more waves. `config` overrides the launch shape.
    """
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape or k.shape[0] != q.shape[0] or \
            k.shape[2] != q.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"prefill_attention: q must be [tokens, heads, dim] and k, v [tokens, "
                         f"kv_heads, dim] with heads a multiple of kv_heads; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype != torch.int32:
        raise ValueError(f"prefill_attention: cu_seqlens must be int32 [prompts + 1], got "
                         f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    if int(max_seqlen) <= 0:
        raise ValueError(f"prefill_attention: max_seqlen must be positive, got {max_seqlen}")
    head_dim = q.shape[2]
    if head_dim & (head_dim - 1) or head_dim < 16:
        raise ValueError(f"prefill_attention: head_dim must be a power of two >= 16, got "
                         f"{head_dim}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    sms = _check_sm_count(sm_count, q)
    if out is None:
        out = torch.empty_like(q)
    if out.shape != q.shape:
        raise ValueError(f"prefill_attention: out must be {tuple(q.shape)}, got {tuple(out.shape)}")
    if not _use_triton(q):
        return reference.prefill_attention(q, k, v, cu_seqlens, scale=scale, out=out)
    if any(t.stride(-1) != 1 for t in (q, k, v, out)):
        raise ValueError("prefill_attention: the last dimension of q, k, v and out must be "
                         "contiguous")
    from pipedecode.runtime.kernels import _prefill_attention

    cfg = config or _prefill_attention.choose_config(sms, head_dim, q.element_size(), q.is_cuda)
    return _prefill_attention.prefill_attention(q, k, v, cu_seqlens, out, max_seqlen=int(max_seqlen),
                                                scale=scale, cfg=cfg)
