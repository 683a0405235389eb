"""The contract between the engine and a model runner: what `LLM` calls, what it gets back.

Owns the `ModelRunner` protocol, `RunnerConfig` (what a runner is built from) and
`default_runner`, which builds pipedecode's paged GPU runner. Knows nothing of how a runner
computes: the engine hands it sequences whose block tables the scheduler filled (block 0 is
the null block, for padded rows) and samples from the logits it returns.

A runner reads from each sequence (pipedecode.engine.sequence.Sequence):
  prefill: `token_ids` (every token; their KV is written into `block_table`'s blocks, token t
           at block_table[t // block_size], slot t % block_size) -> the logits of the last.
  decode:  `last_token_id` at position `num_computed_tokens` (its KV is written there too) over
           a context of `num_computed_tokens + 1` tokens read through `block_table`.
Sequences of a decode batch are ordered micro-batch by micro-batch; `micro_batches[j]` are the
(contiguous) indices of micro-batch j, grouped by the scheduler to balance sizes and KV.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence as Seq, runtime_checkable

import torch

from pipedecode.engine.sequence import Sequence
from pipedecode.errors import PipedecodeError
from pipedecode.profiles.schema import DeviceProfile

DEFAULT_BLOCK_SIZE = 16
PAGED_RUNNER = "pipedecode.runtime.model_runner"


@dataclass(frozen=True)
class RunnerConfig:
    """block_size: tokens per KV block. kv_cache_memory_bytes: the pool's size (None: what the
    GPU has free after weights and activations). max_num_seqs / max_num_batched_tokens: the
    largest decode batch and prefill the runner must hold. profile: the device profile its
    plan (micro-batches, SM split) is made for. interleave: True lets the plan split decode
    steps into micro-batches interleaved on SM partitions where it predicts a gain (and a
    measurement confirms it); False runs every step sequentially."""

    profile: DeviceProfile
    block_size: int = DEFAULT_BLOCK_SIZE
    kv_cache_memory_bytes: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    interleave: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.interleave, bool):
            raise ValueError(f"interleave must be True or False, got {self.interleave!r}")
        memory = self.kv_cache_memory_bytes
        if memory is not None and (not isinstance(memory, int) or memory <= 0):
            raise ValueError(f"kv_cache_memory must be a positive number of bytes or None, "
                             f"got {memory!r}")


@runtime_checkable
class ModelRunner(Protocol):
    num_blocks: int       # KV blocks in the pool, the null block 0 included
    block_size: int       # tokens per block
    max_model_len: int    # positions the model supports (prompt + output)

    def num_micro_batches(self, num_seqs: int, kv_tokens: int) -> int:
        """Micro-batches the runner's plan splits a decode batch of `num_seqs` sequences
        holding `kv_tokens` of context into (1: sequential)."""

    def prefill(self, seqs: Seq[Sequence]) -> torch.Tensor:
        """Prefill every token of each sequence into its blocks; logits [len(seqs), vocab] of
        each sequence's last token."""

    def decode(self, seqs: Seq[Sequence], micro_batches: tuple[tuple[int, ...], ...]
               ) -> torch.Tensor:
        """One decode step of each sequence's last token; logits [len(seqs), vocab]."""


RunnerFactory = Callable[[torch.nn.Module, RunnerConfig], ModelRunner]


def default_runner(model: torch.nn.Module, config: RunnerConfig) -> ModelRunner:
    """pipedecode's paged runner (`pipedecode.runtime.model_runner.PagedModelRunner`)."""
    if importlib.util.find_spec(PAGED_RUNNER) is None:
        raise PipedecodeError(
            f"pipedecode's paged model runner ({PAGED_RUNNER}) is not in this build; pass "
            f"LLM(..., runner=factory), a callable (model, RunnerConfig) -> ModelRunner")
    module = importlib.import_module(PAGED_RUNNER)
    return module.PagedModelRunner(model, config)


def check_runner(runner: object) -> ModelRunner:
    """`runner` if it has the protocol's members with sane values; a clear error if not."""
    if not isinstance(runner, ModelRunner):
        missing = [m for m in ("num_blocks", "block_size", "max_model_len", "num_micro_batches",
                               "prefill", "decode") if not hasattr(runner, m)]
        raise TypeError(f"the model runner {type(runner).__name__} lacks {missing}")
    for name, least in (("num_blocks", 2), ("block_size", 1), ("max_model_len", 2)):
        value = getattr(runner, name)
        if not isinstance(value, int) or value < least:
            raise ValueError(f"the model runner's {name} must be an integer >= {least}, "
                             f"got {value!r}")
    return runner
