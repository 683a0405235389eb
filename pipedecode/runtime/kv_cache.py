"""The paged KV cache's tensors: per-layer block pools, and slot arithmetic on the device.

Owns `PagedKVCache` (per layer, K and V each `[num_blocks, kv_heads, block_size, head_dim]`:
each block of one head is contiguous, so bulk copies can feed it) with its memory arithmetic
(`bytes_per_block`, `blocks_for_memory`), and the helpers that turn block tables and positions
into flat slot ids (`block * block_size + offset`), as `write_kv` takes them. Token p of a
sequence lives in block `block_tables[seq, p // block_size]` at offset `p % block_size`.
Knows nothing of which blocks are free or who owns them: that is the engine's block manager,
which also keeps block 0 as the null block that padded rows of a batch read and write.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from pipedecode.models import ModelShape

NULL_BLOCK = 0   # the block padded rows point at (context length 1, a table of zeros)


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class PagedKVCache:
    """Per-layer K and V block pools of one model, allocated once (zeros, so the null block
    holds finite values)."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, *, dtype: torch.dtype = torch.bfloat16,
                 device: torch.device | str = "cpu") -> None:
        for name, value in (("num_layers", num_layers), ("num_blocks", num_blocks),
                            ("block_size", block_size), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim)):
            if int(value) != value or value <= 0:
                raise ValueError(f"PagedKVCache: {name} must be a positive integer, got {value!r}")
        shape = (num_blocks, num_kv_heads, block_size, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @classmethod
    def for_weights(cls, weights, num_blocks: int, block_size: int) -> "PagedKVCache":
        """A cache for `PackedWeights`: its layers, KV heads, head size, dtype and device."""
        shape = weights.shape
        return cls(len(weights.layers), num_blocks, block_size, shape.num_kv_heads,
                   shape.head_dim, dtype=weights.dtype, device=weights.device)

    @classmethod
    def wrap(cls, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> "PagedKVCache":
        """A cache over existing per-layer tensors of the block layout, shared, not copied. A
        static cache [batch, kv_heads, max_context, head_dim] is one: `batch` blocks of
        max_context positions, request b's position p at slot b * max_context + p."""
        keys, values = list(keys), list(values)
        if not keys or len(keys) != len(values):
            raise ValueError(f"PagedKVCache.wrap needs as many key as value tensors (at least "
                             f"one), got {len(keys)} and {len(values)}")
        first = keys[0]
        for t in keys + values:
            if t.dim() != 4 or t.shape != first.shape or t.dtype != first.dtype or \
                    t.device != first.device:
                raise ValueError(f"PagedKVCache.wrap: every tensor must be [blocks, kv_heads, "
                                 f"block_size, head_dim] like the first, {tuple(first.shape)} "
                                 f"{first.dtype} on {first.device}; got {tuple(t.shape)} "
                                 f"{t.dtype} on {t.device}")
        cache = cls.__new__(cls)
        cache.k, cache.v = keys, values
        return cache

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.k[0].shape[1]

    @property
    def block_size(self) -> int:
        return self.k[0].shape[2]

    @property
    def head_dim(self) -> int:
        return self.k[0].shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for_tokens(self, tokens: int) -> int:
        """Blocks that hold `tokens` positions of one sequence."""
        return math.ceil(tokens / self.block_size)

    @staticmethod
    def bytes_per_block(shape: ModelShape, block_size: int, dtype: torch.dtype, *,
                        num_layers: int | None = None) -> int:
        """Bytes one block takes over all layers, K and V (num_layers: default the shape's)."""
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        layers = shape.num_layers if num_layers is None else num_layers
        return 2 * layers * shape.num_kv_heads * block_size * shape.head_dim * _dtype_bytes(dtype)

    @classmethod
    def blocks_for_memory(cls, memory_bytes: int, shape: ModelShape, block_size: int,
                          dtype: torch.dtype, *, num_layers: int | None = None) -> int:
        """How many whole blocks fit in memory_bytes (0 where not even one does)."""
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        per_block = cls.bytes_per_block(shape, block_size, dtype, num_layers=num_layers)
        return int(memory_bytes // per_block)


def slot_ids(block_tables: torch.Tensor, seq_ids: torch.Tensor, positions: torch.Tensor,
             block_size: int) -> torch.Tensor:
    """Flat slot ids (int64 [tokens]) of the tokens at `positions` of the sequences `seq_ids`
    (rows of block_tables [seqs, max_blocks]); on the device, no host sync."""
    if seq_ids.shape != positions.shape or positions.dim() != 1:
        raise ValueError(f"slot_ids: seq_ids and positions must be [tokens] alike, got "
                         f"{tuple(seq_ids.shape)} and {tuple(positions.shape)}")
    if block_size <= 0:
        raise ValueError(f"slot_ids: block_size must be positive, got {block_size}")
    positions = positions.long()
    blocks = block_tables[seq_ids.long(), positions // block_size].long()
    return blocks * block_size + positions % block_size


def packed_positions(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(seq_ids, positions), int64 [tokens], of prompts packed by cu_seqlens [prompts + 1]:
    token t belongs to prompt seq_ids[t] at position positions[t] (0, 1, ... per prompt)."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be [prompts + 1], got {tuple(cu_seqlens.shape)}")
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    seq_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths)
    positions = torch.arange(seq_ids.numel(), device=cu.device) - cu[:-1][seq_ids]
    return seq_ids, positions
