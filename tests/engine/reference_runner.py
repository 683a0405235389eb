"""A reference ModelRunner for the engine's tests: exact, slow, and strict about block tables.

Each step runs the transformers model on each sequence's whole token list (no KV cache, so the
logits are those of an eager forward, exact in float32). Beside it, a simulated block pool
holds token ids where a real runner would hold K and V: prefill and decode write each token
into `block_table[pos // block_size]` at slot `pos % block_size`, and the model reads the
context back through the block table. A block handed to two live sequences, a table too
short, the null block used, or a token not recomputed after preemption changes what is read
back, and the runner raises. It is the engine's reference, not a second engine.
"""

from __future__ import annotations

import torch

from pipedecode.engine.runner import RunnerConfig


class ReferenceRunner:
    def __init__(self, model: torch.nn.Module, config: RunnerConfig, *, num_blocks: int = 64,
                 micro_batches: int = 1, max_model_len: int | None = None) -> None:
        self.model, self.block_size, self.num_blocks = model, config.block_size, num_blocks
        self.max_model_len = max_model_len or model.config.max_position_embeddings
        self.micro_batches = micro_batches
        self.config = config
        self.pool: dict[int, list[int | None]] = {}      # block id -> token id per slot
        self.calls: list[tuple[str, tuple[int, ...], tuple[tuple[int, ...], ...]]] = []

    @classmethod
    def factory(cls, **options):
        return lambda model, config: cls(model, config, **options)

    def num_micro_batches(self, num_seqs: int, kv_tokens: int) -> int:
        return self.micro_batches

    # ---- the simulated pool -----------------------------------------------------------------
    def _write(self, seq, positions) -> None:
        for pos in positions:
            block = seq.block_table[pos // self.block_size]
            if not 0 < block < self.num_blocks:
                raise AssertionError(f"sequence {seq.seq_id}: block {block} is outside the "
                                     f"pool 1..{self.num_blocks - 1}")
            self.pool.setdefault(block, [None] * self.block_size)[pos % self.block_size] = \
                seq.token_ids[pos]

    def _context(self, seq, length: int) -> list[int]:
        """The first `length` tokens of `seq` read back through its block table."""
        if len(seq.block_table) * self.block_size < length:
            raise AssertionError(f"sequence {seq.seq_id}: {len(seq.block_table)} blocks for "
                                 f"{length} tokens")
        tokens = [self.pool[seq.block_table[p // self.block_size]][p % self.block_size]
                  for p in range(length)]
        if tokens != seq.token_ids[:length]:
            raise AssertionError(f"sequence {seq.seq_id}: the cache holds another context "
                                 f"than its tokens (a block shared or not recomputed)")
        return tokens

    @staticmethod
    def _disjoint(seqs) -> None:
        blocks = [b for s in seqs for b in s.block_table]
        if len(blocks) != len(set(blocks)):
            raise AssertionError("two sequences of one batch share a block")

    @torch.no_grad()
    def _logits(self, tokens: list[int]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids = torch.tensor([tokens], device=device)
        return self.model(input_ids=ids).logits[0, -1].float()

    # ---- the protocol -----------------------------------------------------------------------
    def prefill(self, seqs) -> torch.Tensor:
        self._disjoint(seqs)
        self.calls.append(("prefill", tuple(s.seq_id for s in seqs), ()))
        for seq in seqs:
            self._write(seq, range(seq.num_tokens))
        return torch.stack([self._logits(self._context(s, s.num_tokens)) for s in seqs])

    def decode(self, seqs, micro_batches) -> torch.Tensor:
        self._disjoint(seqs)
        flat = [i for mb in micro_batches for i in mb]
        if flat != list(range(len(seqs))) or any(not mb for mb in micro_batches):
            raise AssertionError(f"micro-batches {micro_batches} do not cover the "
                                 f"{len(seqs)} sequences contiguously, in order")
        self.calls.append(("decode", tuple(s.seq_id for s in seqs), micro_batches))
        out = []
        for seq in seqs:
            pos = seq.num_computed_tokens
            if pos != seq.num_tokens - 1:
                raise AssertionError(f"sequence {seq.seq_id}: decode at position {pos} of "
                                     f"{seq.num_tokens} tokens")
            self._write(seq, [pos])
            out.append(self._logits(self._context(seq, pos + 1)))
        return torch.stack(out)
