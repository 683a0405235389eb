"""FLOPs and bytes moved: the one place pipedecode counts them, per op and per decode stage.

Per op, from sizes alone: a GEMM, dense attention, an elementwise kernel, a copy. Per stage of one
Llama-family decoder layer as pipedecode's kernels run it (fused q/k/v and gate/up GEMMs, RoPE
with the KV write, RMSNorm, residual adds), for a micro-batch of `tokens` requests holding
`kv_tokens` of context:
  pre_attn   input RMSNorm, fused QKV GEMM, RoPE on q and k
  attention  KV-cache write of the new token and decode attention
  post_attn  o_proj GEMM, residual add + RMSNorm, gate_up GEMM, SiLU*mul, down GEMM, residual add
  head       final RMSNorm and the LM head GEMM
A stage's FLOPs are those of its GEMMs and attention (elementwise FLOPs are a rounding error at
these shapes and are not counted); its bytes count every kernel's reads and writes once.

Knows nothing of devices, latencies or graphs: `passes/cost.py` maps torch-IR nodes onto the
per-op rules, `planner/cost.py` prices the per-stage work on a device profile,
`profiles/latency.py` prices single ops and the benchmarks print floors from the step counts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from pipedecode.models import LinearShape, ModelShape


@dataclass(frozen=True)
class Counts:
    """FLOPs and bytes moved of some work; sums with `+`."""

    flops: float = 0
    bytes_moved: float = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.flops + other.flops, self.bytes_moved + other.bytes_moved)

    def times(self, factor: float) -> "Counts":
        return Counts(self.flops * factor, self.bytes_moved * factor)


def total(parts: Iterable[Counts]) -> Counts:
    out = Counts()
    for part in parts:
        out = out + part
    return out


# ---- per op ----------------------------------------------------------------------------------
def gemm(m: float, n: int, k: int, elem_bytes: int, *, bias: bool = False) -> Counts:
    """y[m, n] = x[m, k] @ w[n, k]^T (+ b[n]): 2mnk FLOPs (+ mn bias adds); x, w, b read once,
    y written once."""
    flops = 2 * m * n * k + (m * n if bias else 0)
    elems = m * k + n * k + m * n + (n if bias else 0)
    return Counts(flops, elems * elem_bytes)


def attention(queries: float, kv_read: float, kv_attended: float, heads: int, kv_heads: int,
              head_dim: int, elem_bytes: int) -> Counts:
    """softmax(q k^T) v, dense: QK^T and PV are 2 FLOPs per (query, key, head, dim) each.

    `queries` query rows (per head), `kv_read` cached positions read (K and V once per kv head),
    `kv_attended` (query, key) pairs scored. Decode: queries = batch, kv_read = kv_attended =
    the KV tokens of the batch. q is read and the output written once per query and head.
    """
    flops = 4 * kv_attended * heads * head_dim
    bytes_moved = (2 * kv_read * kv_heads + 2 * queries * heads) * head_dim * elem_bytes
    return Counts(flops, bytes_moved)


def copy(nbytes: float) -> Counts:
    """A copy of `nbytes` (a gather, a cache write of rows just computed): read once, written
    once."""
    return Counts(0, 2 * nbytes)


def elementwise(inputs: Sequence[tuple[int, int]], output: tuple[int, int]) -> Counts:
    """One unfused elementwise kernel over tensors given as (numel, nbytes): one FLOP per element
    of the largest tensor; every input read once, the output written once."""
    flops = max([output[0]] + [numel for numel, _ in inputs])
    return Counts(flops, output[1] + sum(nbytes for _, nbytes in inputs))


# ---- per stage of one layer --------------------------------------------------------------------
@dataclass(frozen=True)
class StageWork:
    """What one stage runs for `tokens` rows: its GEMMs, and its other kernels as bytes."""

    tokens: float
    gemms: tuple["LinearShape", ...]
    elementwise_bytes: float        # norms, RoPE, residual adds, activations, the KV write
    elementwise_kernels: int
    dtype_bytes: int
    attention: Counts = Counts()    # the attention op itself (attention stage only)

    def counts(self) -> Counts:
        gemms = total(gemm(self.tokens, s.n, s.k, self.dtype_bytes) for s in self.gemms)
        return gemms + self.attention + Counts(0, self.elementwise_bytes)


@functools.lru_cache(maxsize=256)
def _linears(model: "ModelShape", *names: str) -> tuple["LinearShape", ...]:
    shapes = {s.name: s for s in model.linears()}
    return tuple(shapes[name] for name in names)


def pre_attn(model: "ModelShape", tokens: float) -> StageWork:
    m, b = model, model.dtype_bytes
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    norm, rope = 2 * m.hidden_size, 2 * (q + kv)          # elements read + written per token
    return StageWork(tokens, _linears(m, "qkv_proj"), tokens * b * (norm + rope), 2, b)


def post_attn(model: "ModelShape", tokens: float) -> StageWork:
    m, b = model, model.dtype_bytes
    add_norm, residual, act = 4 * m.hidden_size, 2 * m.hidden_size, 3 * m.intermediate_size
    return StageWork(tokens, _linears(m, "o_proj", "gate_up_proj", "down_proj"),
                     tokens * b * (add_norm + residual + act), 3, b)


def kv_row_bytes(model: "ModelShape") -> int:
    """K and V of one token in one layer."""
    return 2 * model.num_kv_heads * model.head_dim * model.dtype_bytes


def attention_stage(model: "ModelShape", tokens: float, kv_tokens: float) -> StageWork:
    """The new token's K/V written (one kernel), then decode attention over `kv_tokens`."""
    m = model
    op = attention(tokens, kv_tokens, kv_tokens, m.num_heads, m.num_kv_heads, m.head_dim,
                   m.dtype_bytes)
    return StageWork(tokens, (), tokens * kv_row_bytes(m), 1, m.dtype_bytes, op)


def layer(model: "ModelShape", tokens: float, kv_tokens: float) -> Counts:
    return (pre_attn(model, tokens).counts() + attention_stage(model, tokens, kv_tokens).counts()
            + post_attn(model, tokens).counts())


def head_norm_bytes(model: "ModelShape", tokens: float) -> float:
    """The final RMSNorm before the LM head: read and write one hidden row per token."""
    return tokens * 2 * model.hidden_size * model.dtype_bytes


def head_weights(model: "ModelShape") -> int:
    """Elements of the LM head's weight [vocab, hidden]."""
    return model.vocab_size * model.hidden_size


def step(model: "ModelShape", tokens: float, kv_tokens: float) -> Counts:
    """One decode step of a micro-batch: every layer, then the LM head's GEMM (its weight read
    once, its FLOPs per token). A step of several micro-batches is the sum of their steps:
    each reads the weights again."""
    head = head_weights(model)
    return layer(model, tokens, kv_tokens).times(model.num_layers) + \
        Counts(2 * tokens * head, head * model.dtype_bytes)


def prefill_attention(model: "ModelShape", prompt_lens: Sequence[int]) -> Counts:
    """Causal attention of prompts prefilled as one ragged batch: each prompt of n tokens scores
    n^2 / 2 (query, key) pairs; K/V of every prompt token written and read once."""
    m = model
    tokens = sum(prompt_lens)
    pairs = sum(n * n / 2 for n in prompt_lens)
    op = attention(tokens, tokens, pairs, m.num_heads, m.num_kv_heads, m.head_dim, m.dtype_bytes)
    return op + Counts(0, tokens * kv_row_bytes(m))
