"""The decode step's stages on static buffers: embed, pre_attn, attention, post_attn, head.

Owns `DecodeStep`: the packed weights, the KV cache, per-request context lengths and every
activation buffer, allocated once. Three cache modes: a static cache ([layers] x [batch,
kv_heads, max_context, head_dim]; its own), a caller's static cache (such as transformers'
StaticCache tensors), or a paged cache (`paged=PagedKVCache`: block pools shared by the requests,
read and written through a `block_tables` [batch, ceil(max_context / block_size)] int32 buffer
that `set_inputs` fills, so a graph captured once replays for any tables). By default request
b's token is written at position context_lens[b] - 1, which is also its RoPE position, and it
attends to positions [0, context_lens[b]). A left-padded static cache (`left_padded=True`, as
transformers keeps a batch of unequal prompts) also takes per-request RoPE positions and first
attended positions. Each stage works on a contiguous row range of the batch (a micro-batch) and
writes only that range of the buffers (and, paged, only the cache slots its rows' tables name),
so two micro-batches never share a buffer and stages of different micro-batches can run on
different streams. Knows nothing of streams, graphs or schedules: it is told which rows, which
layer and where the kernels run (a `lane.Lane`: the SMs they plan for and, co-resident, what
each persistent CTA may hold; a bare SM count or None, the whole GPU, also do).

A pipeline stage (pipedecode.distributed) runs the same stages on the weights of its layers
only (`weights.layers` is its layer range, the KV cache holds those layers). A stage whose
weights have an empty (zero-row) embedding does not embed: its `embed` copies the residual
stream the previous stage computed, written by the caller into `hidden_in` [batch, hidden]
float32, into `x` (a copy, so every launch of a captured graph starts from the same input).
A stage whose LM head is empty does not end the model: `head` does nothing and the step's
output is `x` (`output`), the residual stream the next stage takes.
"""

from __future__ import annotations

import torch

from pipedecode.runtime.kv_cache import PagedKVCache
from pipedecode.runtime.lane import Lane
from pipedecode.runtime.ops import KernelSet, kernel_set
from pipedecode.runtime.weights import PackedWeights

STAGES = ("pre_attn", "attention", "post_attn")


def kernel_where(lane: Lane | int | None) -> dict:
    """Where-arguments of a GEMM or attention launch: the SM count, and the lane itself in
    co-resident mode (kernel sets that take no lane then never see one)."""
    lane = Lane.of(lane)
    return {"sm_count": lane.sm_count, "lane": lane} if lane.coresident else \
        {"sm_count": lane.sm_count}


class DecodeStep:
    """One decode step of a Llama-family model for `batch_size` requests, on static buffers."""

    def __init__(self, weights: PackedWeights, batch_size: int, max_context: int, *,
                 kernels: KernelSet | None = None,
                 caches: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
                 left_padded: bool = False, paged: PagedKVCache | None = None,
                 rows_of: "DecodeStep | None" = None) -> None:
        """caches: (keys, values), one [batch, kv_heads, max_context, head_dim] tensor per layer
        each, written in place (default: allocated here, zeros). paged: a block-pool cache
        (excludes caches and left_padded). rows_of: a larger paged step on the same weights,
        cache and max_context whose buffers this step's are the first batch_size rows of
        (steps of several batch sizes that never run at once then cost one set of buffers)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 < max_context <= weights.max_positions:
            raise ValueError(f"max_context must be in 1..{weights.max_positions} (the RoPE "
                             f"table), got {max_context}")
        self.weights, self.batch_size, self.max_context = weights, batch_size, max_context
        self.kernels = kernels or kernel_set("auto", weights.device)
        shape, dev, dt = weights.shape, weights.device, weights.dtype
        self.num_heads, self.num_kv_heads = shape.num_heads, shape.num_kv_heads
        self.head_dim, self.eps = shape.head_dim, weights.rms_eps
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_dim, self.kv_dim = q_dim, kv_dim
        inter = weights.layers[0].gate_up.shape[0] // 2
        b, h = batch_size, shape.hidden_size
        self._check_rows_of(rows_of, paged)

        def buf(name: str, *size: int, dtype: torch.dtype = dt) -> torch.Tensor:
            if rows_of is not None:
                return getattr(rows_of, name)[:b]
            return torch.zeros(size, dtype=dtype, device=dev)

        self.tokens = buf("tokens", b, dtype=torch.long)
        self.context_lens = buf("context_lens", b, dtype=torch.int32)   # incl. the current token
        self.positions = buf("positions", b, dtype=torch.int32)   # context_lens - 1: slot written
        self.rope_positions = self.positions            # left_padded: its own buffer
        self.context_starts = None                      # left_padded: first attended position
        if left_padded:
            self.rope_positions = buf("rope_positions", b, dtype=torch.int32)
            self.context_starts = buf("context_starts", b, dtype=torch.int32)
        # The residual stream stays float32 between layers (transformers keeps it in the model
        # dtype): one rounding per layer fewer; identical for float32 models. On CUDA the o_proj
        # and down projections add their float32 products into it in the GEMM's epilogue.
        self.x = buf("x", b, h, dtype=torch.float32)
        self.h, self.tmp = buf("h", b, h), buf("tmp", b, h)
        self.qkv = buf("qkv", b, q_dim + 2 * kv_dim)
        self.q = buf("q", b, self.num_heads, self.head_dim)
        self.attn = buf("attn", b, q_dim)
        self.gate_up, self.act = buf("gate_up", b, 2 * inter), buf("act", b, inter)
        self.cos, self.sin = buf("cos", b, self.head_dim), buf("sin", b, self.head_dim)
        # a stage that does not end the model keeps an empty logits buffer; `output` is then x
        self.has_embedding = weights.embed.shape[0] > 0
        self.has_head = weights.lm_head.shape[0] > 0
        self.logits = buf("logits", b, weights.lm_head.shape[0])
        self.hidden_in = None if self.has_embedding else \
            buf("hidden_in", b, h, dtype=torch.float32)
        self.output = self.logits if self.has_head else self.x
        self.block_tables: torch.Tensor | None = None      # paged: [batch, max_blocks] int32
        if paged is not None:
            if caches is not None or left_padded:
                raise ValueError("a paged step takes neither caches nor left_padded")
            self._check_paged(paged)
            self.block_tables = buf("block_tables", b, paged.blocks_for_tokens(max_context),
                                    dtype=torch.int32)
            self.cache = paged
        else:
            self.cache = PagedKVCache.wrap(*self._static_caches(caches))
        self.k_cache, self.v_cache = self.cache.k, self.cache.v

    def _check_rows_of(self, rows_of: "DecodeStep | None", paged: PagedKVCache | None) -> None:
        if rows_of is None:
            return
        if paged is None or rows_of.cache is not paged or rows_of.weights is not self.weights \
                or rows_of.max_context != self.max_context \
                or rows_of.batch_size < self.batch_size:
            raise ValueError(f"rows_of must be a paged step on the same weights, cache and "
                             f"max_context with at least {self.batch_size} rows")

    def _static_caches(self, caches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        w = self.weights
        cache = (self.batch_size, self.num_kv_heads, self.max_context, self.head_dim)
        if caches is None:
            return ([torch.zeros(cache, dtype=w.dtype, device=w.device) for _ in w.layers],
                    [torch.zeros(cache, dtype=w.dtype, device=w.device) for _ in w.layers])
        keys, values = list(caches[0]), list(caches[1])
        for t in keys + values:
            if tuple(t.shape) != cache or t.dtype != w.dtype or t.device != w.device:
                raise ValueError(f"every cache tensor must be {cache} {w.dtype} on {w.device}, "
                                 f"got {tuple(t.shape)} {t.dtype} on {t.device}")
        if len(keys) != len(w.layers) or len(values) != len(keys):
            raise ValueError(f"caches need {len(w.layers)} key and value tensors, got "
                             f"{len(keys)} and {len(values)}")
        return keys, values

    def _check_paged(self, paged: PagedKVCache) -> None:
        w = self.weights
        want = (len(w.layers), self.num_kv_heads, self.head_dim, w.dtype, w.device)
        have = (paged.num_layers, paged.num_kv_heads, paged.head_dim, paged.dtype, paged.device)
        if have != want:
            raise ValueError(f"the paged cache must have (layers, kv_heads, head_dim, dtype, "
                             f"device) {want} as the weights, got {have}")

    @property
    def num_layers(self) -> int:
        return len(self.weights.layers)

    @property
    def paged(self) -> bool:
        return self.block_tables is not None

    def set_inputs(self, tokens: torch.Tensor, context_lens: torch.Tensor, *,
                   rope_positions: torch.Tensor | None = None,
                   context_starts: torch.Tensor | None = None,
                   block_tables: torch.Tensor | None = None) -> None:
        """Copy this step's token ids and context lengths (incl. the new token) into the buffers;
        a left-padded step also takes each request's RoPE position and first attended position,
        a paged step each request's block table ([batch, m] int, m <= the buffer's columns;
        columns past m keep what they held and are read only by a context that needs them)."""
        padded = self.context_starts is not None
        if (rope_positions is not None) != padded or (context_starts is not None) != padded:
            raise ValueError("rope_positions and context_starts are given exactly when the step "
                             "was built with left_padded=True")
        if (block_tables is not None) != self.paged:
            raise ValueError("block_tables is given exactly when the step was built with paged=")
        if block_tables is not None:
            rows, cols = self.block_tables.shape
            if block_tables.dim() != 2 or block_tables.shape[0] != rows or \
                    block_tables.shape[1] > cols:
                raise ValueError(f"block_tables must be [{rows}, <= {cols}], got "
                                 f"{tuple(block_tables.shape)}")
            self.block_tables[:, :block_tables.shape[1]].copy_(block_tables)
        self.tokens.copy_(tokens)
        self.context_lens.copy_(context_lens)
        torch.sub(self.context_lens, 1, out=self.positions)
        if self.context_starts is not None:
            self.rope_positions.copy_(rope_positions)
            self.context_starts.copy_(context_starts)

    def _cache_args(self, layer: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(keys, values, extra kwargs) a kernel reads for rows: the rows' static cache, or the
        whole pool with the rows' block tables."""
        if self.block_tables is None:
            return self.k_cache[layer][rows], self.v_cache[layer][rows], {}
        return self.k_cache[layer], self.v_cache[layer], {"block_tables": self.block_tables[rows]}

    # Stages. `rows` is a contiguous slice of the batch; `lane` where the kernels run.
    def embed(self, rows: slice, lane: Lane | int | None = None) -> None:
        w = self.weights
        if self.has_embedding:
            torch.index_select(w.embed, 0, self.tokens[rows], out=self.h[rows])
            self.x[rows].copy_(self.h[rows])
        else:                       # a later pipeline stage: the previous stage's residual
            self.x[rows].copy_(self.hidden_in[rows])
        torch.index_select(w.rope_cos, 0, self.rope_positions[rows], out=self.cos[rows])
        torch.index_select(w.rope_sin, 0, self.rope_positions[rows], out=self.sin[rows])

    def pre_attn(self, layer: int, rows: slice, lane: Lane | int | None = None) -> None:
        """RMSNorm, fused q/k/v projection, RoPE, and the KV-cache write of this token."""
        k, lw = self.kernels, self.weights.layers[layer]
        n = rows.stop - rows.start
        k.rms_norm(self.x[rows], lw.input_norm, self.eps, out=self.h[rows])
        qkv = k.linear(self.h[rows], lw.qkv, bias=lw.qkv_bias, out=self.qkv[rows],
                       **kernel_where(lane))
        q = qkv[:, :self.q_dim].view(n, self.num_heads, self.head_dim)
        key = qkv[:, self.q_dim:self.q_dim + self.kv_dim].view(n, self.num_kv_heads, self.head_dim)
        val = qkv[:, self.q_dim + self.kv_dim:].view(n, self.num_kv_heads, self.head_dim)
        keys, values, paged = self._cache_args(layer, rows)
        k.rope_kv_write(q, key, val, self.cos[rows], self.sin[rows], keys, values,
                        self.positions[rows], q_out=self.q[rows], **paged)

    def attention(self, layer: int, rows: slice, lane: Lane | int | None = None) -> None:
        n = rows.stop - rows.start
        keys, values, extra = self._cache_args(layer, rows)
        if self.context_starts is not None:
            extra["context_starts"] = self.context_starts[rows]
        self.kernels.decode_attention(
            self.q[rows], keys, values, self.context_lens[rows],
            out=self.attn[rows].view(n, self.num_heads, self.head_dim), **kernel_where(lane),
            **extra)

    def post_attn(self, layer: int, rows: slice, lane: Lane | int | None = None) -> None:
        """Output projection + residual, RMSNorm, gate/up + SiLU, down projection + residual."""
        k, lw, where = self.kernels, self.weights.layers[layer], kernel_where(lane)
        x, tmp = self.x[rows], self.tmp[rows]
        k.linear_add(self.attn[rows], lw.o_proj, out=x, scratch=tmp, **where)
        k.rms_norm(x, lw.post_norm, self.eps, out=self.h[rows])
        k.gate_up_silu(self.h[rows], lw.gate_up, scratch=self.gate_up[rows],
                       out=self.act[rows], **where)
        k.linear_add(self.act[rows], lw.down, out=x, scratch=tmp, **where)

    def head(self, rows: slice, lane: Lane | int | None = None) -> None:
        if not self.has_head:       # a pipeline stage before the last: its output is x
            return
        w = self.weights
        self.kernels.rms_norm(self.x[rows], w.final_norm, self.eps, out=self.h[rows])
        self.kernels.linear(self.h[rows], w.lm_head, out=self.logits[rows], **kernel_where(lane))

    def run_sequential(self) -> torch.Tensor:
        """Every stage of the whole batch in order on the current stream; returns the logits
        (a pipeline stage before the last: its empty logits; its output is `x`)."""
        rows = slice(0, self.batch_size)
        self.embed(rows)
        for layer in range(self.num_layers):
            self.pre_attn(layer, rows)
            self.attention(layer, rows)
            self.post_attn(layer, rows)
        self.head(rows)
        return self.logits
