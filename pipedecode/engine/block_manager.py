"""The pool of KV-cache block ids and each sequence's block table: pure bookkeeping, no tensors.

Owns which block ids are free, the rule for how many blocks a sequence needs (enough for every
token it holds, so the next step can write its KV), allocation on admission, one more block when
a sequence crosses a block boundary, freeing, and usage counters. Block 0 is the null block:
never handed out, so padded rows of a batch can point at it. Knows nothing of tensors, models
or policies; the runner's cache is indexed by the ids handed out here.
"""

from __future__ import annotations

from typing import Iterable

from pipedecode.engine.sequence import Sequence

NULL_BLOCK = 0


class BlockManager:
    """Block ids 1..num_blocks-1 handed out to sequences (`seq.block_table`)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 2:
            raise ValueError(f"BlockManager: num_blocks must be >= 2 (block 0 is the null "
                             f"block), got {num_blocks!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"BlockManager: block_size must be a positive integer, "
                             f"got {block_size!r}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free = list(range(num_blocks - 1, NULL_BLOCK, -1))   # pop() hands out 1, 2, ...
        self._owner: dict[int, int] = {}                           # block id -> seq_id
        self.peak_used_blocks = 0

    # ---- counters -------------------------------------------------------------------------
    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_usable_blocks - len(self._free)

    @property
    def usage(self) -> float:
        """Share of the usable blocks held now."""
        return self.num_used_blocks / self.num_usable_blocks

    @property
    def peak_usage(self) -> float:
        return self.peak_used_blocks / self.num_usable_blocks

    def reset_peak(self) -> None:
        self.peak_used_blocks = self.num_used_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- admission --------------------------------------------------------------------------
    def can_allocate(self, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) <= len(self._free)

    def allocate(self, seq: Sequence) -> None:
        """Blocks for every token of `seq` (a prefill computes the KV of all of them)."""
        if seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} already holds blocks {seq.block_table}")
        need = self.blocks_for(seq.num_tokens)
        if need > len(self._free):
            raise ValueError(f"sequence {seq.seq_id} needs {need} blocks, {len(self._free)} "
                             f"are free; check can_allocate first")
        seq.block_table = [self._take(seq.seq_id) for _ in range(need)]

    # ---- growth -----------------------------------------------------------------------------
    def needs_block(self, seq: Sequence) -> bool:
        """Whether the next decode step of `seq` writes past its last block."""
        return len(seq.block_table) * self.block_size < seq.num_tokens

    def can_append(self, seqs: Iterable[Sequence]) -> bool:
        return sum(self.needs_block(s) for s in seqs) <= len(self._free)

    def append_slot(self, seq: Sequence) -> None:
        """One more block if the last token of `seq` (fed at the next step) needs it."""
        if not seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} holds no blocks; allocate it first")
        if self.needs_block(seq):
            if not self._free:
                raise ValueError(f"no free block for sequence {seq.seq_id}; check "
                                 f"can_append first")
            seq.block_table.append(self._take(seq.seq_id))

    def free(self, seq: Sequence) -> None:
        for block in reversed(seq.block_table):
            if self._owner.pop(block, None) != seq.seq_id:
                raise ValueError(f"block {block} is not held by sequence {seq.seq_id}")
            self._free.append(block)
        seq.block_table = []

    def _take(self, seq_id: int) -> int:
        block = self._free.pop()
        self._owner[block] = seq_id
        self.peak_used_blocks = max(self.peak_used_blocks, self.num_used_blocks)
        return block
