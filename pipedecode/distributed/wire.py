"""What crosses the wire between the controller and the stages, as int32 arrays.

Owns `BatchMeta` (everything a stage needs to run one micro-batch besides the activations)
and its encoding: a fixed header of `HEADER_INTS` int32 and one int32 payload whose length the
header gives.

  header   op, batch id, kind, sequences, rows (prefill: tokens; decode: the executor's
           rows), width (decode: 2 + block-table columns), payload length, executor key
           (code, then 4 numbers: sequential rows, or micro-batches, rows each, memory SMs,
           compute SMs)
  payload  prefill: token ids [tokens], prompt bounds [prompts + 1], flat KV slots [tokens],
           sequence ids [prompts]
           decode:  the staged rows [rows x width] (token, context length, block table per
           row, padded rows on the null block), sequence ids [sequences], the buffer row of
           each sequence [sequences]

Activations are the float32 residual stream, [tokens, hidden] for a prefill and [rows,
hidden] for a decode step; the last stage returns one int32 token id per sequence. Knows
nothing of transport: controller.py and worker.py send these arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEADER_INTS = 12
OP_BATCH, OP_BEGIN, OP_END = 1, 2, 3
KINDS = ("prefill", "decode")
EXECUTORS = ("sequential", "interleaved")
_INT32_MAX = 2 ** 31 - 1


@dataclass(frozen=True, eq=False)
class BatchMeta:
    """One micro-batch for every stage. prefill: ids [tokens], starts [prompts + 1], slots
    [tokens]; decode: key (the executor), staged [rows, width], rows [sequences] (each
    sequence's buffer row). seq_ids [sequences]: whose tokens the last stage samples."""

    kind: str
    batch_id: int
    seq_ids: np.ndarray
    ids: np.ndarray | None = None
    starts: np.ndarray | None = None
    slots: np.ndarray | None = None
    key: tuple | None = None
    staged: np.ndarray | None = None
    rows: np.ndarray | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.seq_ids)

    @property
    def activation_rows(self) -> int:
        """Rows of the residual stream a stage receives and sends for this micro-batch."""
        return len(self.ids) if self.kind == "prefill" else self.staged.shape[0]


def _int32(name: str, values) -> np.ndarray:
    array = np.asarray(values)
    if array.size and (array.min() < -_INT32_MAX or array.max() > _INT32_MAX):
        raise ValueError(f"the wire carries int32; {name} holds values up to {array.max()}")
    return array.astype(np.int32, copy=False).reshape(-1)


def control_header(op: int) -> np.ndarray:
    """A header without a batch: OP_BEGIN (a generate call starts) or OP_END (it is over)."""
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[0] = op
    return header


def encode(meta: BatchMeta) -> tuple[np.ndarray, np.ndarray]:
    """(header int32 [HEADER_INTS], payload int32 [payload length])."""
    header = control_header(OP_BATCH)
    header[1], header[2], header[3] = meta.batch_id, KINDS.index(meta.kind), meta.num_seqs
    if meta.kind == "prefill":
        parts = [_int32("token ids", meta.ids), _int32("prompt bounds", meta.starts),
                 _int32("KV slots", meta.slots), _int32("sequence ids", meta.seq_ids)]
        header[4] = len(meta.ids)
    else:
        rows, width = meta.staged.shape
        parts = [_int32("staged rows", meta.staged), _int32("sequence ids", meta.seq_ids),
                 _int32("buffer rows", meta.rows)]
        header[4], header[5] = rows, width
        numbers = list(meta.key[1:]) + [0] * (5 - len(meta.key))
        header[7] = EXECUTORS.index(meta.key[0])
        header[8:12] = numbers[:4]
    payload = np.concatenate(parts)
    header[6] = len(payload)
    return header, payload


def decode(header: np.ndarray, payload: np.ndarray) -> BatchMeta:
    """The BatchMeta `encode` made these arrays from."""
    if int(header[0]) != OP_BATCH or len(payload) != int(header[6]):
        raise ValueError(f"not a batch header, or a payload of {len(payload)} ints where the "
                         f"header says {int(header[6])}")
    batch_id, kind, n, rows = (int(v) for v in header[1:5])
    if KINDS[kind] == "prefill":
        cut = np.cumsum([rows, n + 1, rows])
        ids, starts, slots, seq_ids = np.split(payload, cut)
        return BatchMeta("prefill", batch_id, seq_ids, ids=ids.astype(np.int64),
                         starts=starts.copy(), slots=slots.astype(np.int64))
    width = int(header[5])
    staged, seq_ids, buffer_rows = np.split(payload, np.cumsum([rows * width, n]))
    code = EXECUTORS[int(header[7])]
    numbers = tuple(int(v) for v in header[8:12])
    key = (code, numbers[0]) if code == "sequential" else (code, *numbers)
    return BatchMeta("decode", batch_id, seq_ids, key=key,
                     staged=staged.reshape(rows, width), rows=buffer_rows)
