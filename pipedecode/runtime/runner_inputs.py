"""The host side of a paged decode step: token ids, context lengths and block tables, staged.

Owns `StepInputs`: a preallocated host array (pinned on CUDA) holding, per row of a padded
decode batch, [token id, context length, block table...], filled with numpy and sent to the
device with one non-blocking copy; and `BlockTables`, the host copy of each sequence's block
table, written whole when a sequence is prefilled (or first seen) and only its new entries
after that, so a step copies table rows without a Python loop over blocks. Padded rows read
and write the null block: token 0, context length 1, a table of zeros. Knows nothing of
models, executors or scheduling; it reads a sequence's `seq_id`, `token_ids` and
`block_table`, and relies on the block manager's rule that a table only grows at its end
until the sequence is freed (a preempted sequence is prefilled, so written whole, again).
"""

from __future__ import annotations

from typing import Sequence as Seq

import numpy as np
import torch


class _Full(Exception):
    """Every row is held: drop them all and write the batch whole."""


class BlockTables:
    """Block tables on the host, one row per sequence seen (by seq_id), `capacity` rows: when
    they run out every row is dropped and sequences are written whole again as they come."""

    def __init__(self, capacity: int, max_blocks: int) -> None:
        self.table = np.zeros((capacity, max_blocks), dtype=np.int32)
        self.capacity, self.max_blocks = capacity, max_blocks
        self.row_of: dict[int, int] = {}
        self.known: list[int] = [0] * capacity        # entries written per row

    def make_room(self, count: int) -> None:
        """Room for `count` sequences not seen yet: all rows dropped if there is not."""
        if len(self.row_of) + count > self.capacity:
            self.row_of.clear()

    def write(self, seq_id: int, blocks: list[int]) -> int:
        """Row of `seq_id` holding `blocks` whole (a prefill, or a sequence not seen yet); call
        `make_room` for a batch of them first, so no row of the batch is handed out twice."""
        if len(blocks) > self.max_blocks:
            raise ValueError(f"sequence {seq_id}: {len(blocks)} blocks exceed the "
                             f"{self.max_blocks} a table holds")
        row = self.row_of.get(seq_id)
        if row is None:
            if len(self.row_of) == self.capacity:
                raise _Full()
            row = self.row_of[seq_id] = len(self.row_of)
        self.table[row, :len(blocks)] = blocks
        self.known[row] = len(blocks)
        return row

    def rows(self, seqs: Seq) -> tuple[list[int], list[int], list[int], int]:
        """(row of each sequence, its last token, its length, most blocks any holds), tables
        brought up to date: the one Python loop over the batch of a decode step."""
        try:
            return self._rows(seqs)
        except _Full:
            self.row_of.clear()
            return self._rows(seqs)

    def _rows(self, seqs: Seq) -> tuple[list[int], list[int], list[int], int]:
        get, known, most = self.row_of.get, self.known, 1
        rows, tokens, lens = [], [], []
        for seq in seqs:
            blocks, ids = seq.block_table, seq.token_ids
            row, n = get(seq.seq_id), len(blocks)
            if row is None or known[row] != n:
                row = self._grow(seq.seq_id, row, blocks)
            rows.append(row)
            tokens.append(ids[-1])
            lens.append(len(ids))
            if n > most:
                most = n
        return rows, tokens, lens, most

    def _grow(self, seq_id: int, row: int | None, blocks: list[int]) -> int:
        old = self.known[row] if row is not None else 0
        if row is None or old > len(blocks) or \
                (old and self.table[row, old - 1] != blocks[old - 1]):
            return self.write(seq_id, blocks)         # new, or not the table it held
        self.table[row, old:len(blocks)] = blocks[old:]
        self.known[row] = len(blocks)
        return row


class StepInputs:
    """Staging for decode steps of up to `max_rows` rows with tables of `max_blocks`.

    `staged` is the host array [num_rows, 2 + blocks] of the last step staged (what a pipeline
    controller sends its other stages, which `load` it into their own buffers)."""

    def __init__(self, max_rows: int, max_blocks: int, device: torch.device,
                 table_capacity: int) -> None:
        cuda = device.type == "cuda"
        size = max_rows * (2 + max_blocks)
        self.host = torch.zeros(size, dtype=torch.int32, pin_memory=cuda)
        self.dev = torch.zeros(size, dtype=torch.int32, device=device) if cuda else self.host
        self.np = self.host.numpy()
        self.tables = BlockTables(table_capacity, max_blocks)
        self.max_rows, self.max_blocks, self.cuda = max_rows, max_blocks, cuda
        self.staged: np.ndarray | None = None
        # the last host-to-device copy: the host array is rewritten only once it is done (a
        # pipeline stage does not read its output back before staging the next step)
        self._copied = torch.cuda.Event() if cuda else None

    def stage(self, seqs: Seq, num_rows: int, rows: np.ndarray | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Device views (tokens [num_rows], context_lens [num_rows], block_tables [num_rows,
        blocks in use]) of `seqs` in rows `rows` (default 0..len(seqs)-1), padding elsewhere."""
        if num_rows > self.max_rows:
            raise ValueError(f"a step of {num_rows} rows exceeds the {self.max_rows} staged")
        table_rows, tokens, lens, cols = self.tables.rows(seqs)   # lens: incl. the fed token
        width = 2 + cols
        self._wait_copied()
        view = self.np[:num_rows * width].reshape(num_rows, width)
        n = len(seqs)
        if rows is None and n == num_rows:
            view[:, 0], view[:, 1], view[:, 2:] = tokens, lens, self.tables.table[table_rows, :cols]
        else:
            view[:] = 0
            view[:, 1] = 1                                # padded rows: the null block
            at = slice(0, n) if rows is None else rows
            view[at, 0], view[at, 1] = tokens, lens
            view[at, 2:] = self.tables.table[table_rows, :cols]
        return self._to_device(num_rows, width)

    def load(self, staged: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`stage`'s device views of a host array another StepInputs staged (int32 [num_rows,
        2 + blocks]: token, context length, block table per row)."""
        num_rows, width = staged.shape
        if num_rows > self.max_rows or not 2 < width <= 2 + self.max_blocks:
            raise ValueError(f"staged inputs of {num_rows} rows x {width} exceed the "
                             f"{self.max_rows} x {2 + self.max_blocks} this stage holds")
        self._wait_copied()
        self.np[:num_rows * width] = staged.reshape(-1)
        return self._to_device(num_rows, width)

    def _wait_copied(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()

    def _to_device(self, num_rows: int, width: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.staged = self.np[:num_rows * width].reshape(num_rows, width)
        dev = self.dev[:num_rows * width].view(num_rows, width)
        if self.cuda:
            dev.copy_(self.host[:num_rows * width].view(num_rows, width), non_blocking=True)
            self._copied.record()
        return dev[:, 0], dev[:, 1], dev[:, 2:]
