"""One pipeline stage's runner: the paged runner on a layer range, driven by BatchMeta.

Owns `StageRunner`: a `PagedModelRunner` built on the stage's weights (layout.py) whose pool
size the stages agree on (the least any of them holds), and the three things a stage does
with a micro-batch: `prepare` (the controller's stage only: the host half of the step from
the scheduler's batch, as BatchMeta for every stage), `run` (every stage: the device half on
the metadata and the previous stage's residual stream: the residual stream out, or logits on
the last stage) and `sample` (the last stage: the engine's Sampler, its seeded generators per
sequence as in one process). It also answers what `LLM` reads of a ModelRunner (num_blocks,
block_size, max_model_len, num_micro_batches). Knows nothing of transport or of scheduling.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from pipedecode.engine.params import SamplingParams
from pipedecode.engine.runner import RunnerConfig
from pipedecode.engine.sampler import Sampler
from pipedecode.engine.scheduler import ScheduledBatch
from pipedecode.errors import PipedecodeError
from pipedecode.distributed.layout import StageSpec
from pipedecode.distributed.wire import BatchMeta
from pipedecode.runtime.model_runner import PagedModelRunner
from pipedecode.runtime.weights import PackedWeights


class SampledRow(NamedTuple):
    """What the Sampler reads of a sequence."""

    seq_id: int
    params: SamplingParams


class StageRunner:
    """See the module docstring."""

    def __init__(self, model: torch.nn.Module, config: RunnerConfig, spec: StageSpec,
                 weights: PackedWeights, *,
                 num_blocks_of: Callable[[int], int] | None = None, **options) -> None:
        """options: the paged runner's (kernels, use_graphs, planner)."""
        self.spec = spec
        self.runner = PagedModelRunner(model, config, weights=weights,
                                       num_blocks_of=num_blocks_of, **options)
        self.device = self.runner.device
        self.sampler = Sampler()
        self.params: dict[int, SamplingParams] = {}     # the last stage: by sequence id
        self._staged: tuple | None = None               # (batch id, device views) prepared

    # ---- what LLM reads of a ModelRunner --------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.runner.num_blocks

    @property
    def block_size(self) -> int:
        return self.runner.block_size

    @property
    def max_model_len(self) -> int:
        return self.runner.max_model_len

    def num_micro_batches(self, num_seqs: int, kv_tokens: int) -> int:
        return self.runner.num_micro_batches(num_seqs, kv_tokens)

    def prefill(self, seqs):
        raise PipedecodeError("a pipeline stage runs micro-batches the controller sends it")

    decode = prefill

    # ---- micro-batches ---------------------------------------------------------------------
    def prepare(self, batch: ScheduledBatch) -> BatchMeta:
        """The controller's half of `batch`: the arrays every stage runs it on."""
        seqs, runner = batch.seqs, self.runner
        seq_ids = np.fromiter((s.seq_id for s in seqs), dtype=np.int64, count=len(seqs))
        if batch.kind == "prefill":
            ids, starts, slots = runner.prefill_inputs(seqs)
            return BatchMeta("prefill", batch.batch_id, seq_ids, ids=ids, starts=starts,
                             slots=slots)
        key, rows_np, _ = runner.decode_plan(len(seqs), batch.micro_batches)
        views = runner.inputs.stage(seqs, runner.executor(key).step.batch_size, rows_np)
        self._staged = (batch.batch_id, views)
        rows = np.arange(len(seqs)) if rows_np is None else rows_np
        return BatchMeta("decode", batch.batch_id, seq_ids, key=key,
                         staged=runner.inputs.staged.copy(), rows=rows)

    @torch.no_grad()
    def run(self, meta: BatchMeta, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """This stage's layers on `meta` (the residual stream `hidden` from the previous stage
        unless this is the first): the residual stream [activation rows, hidden] float32 for
        the next stage (a fresh tensor), or the last stage's logits."""
        runner = self.runner
        if meta.kind == "prefill":
            starts = meta.starts.astype(np.int32, copy=False)
            return runner.run_prefill(meta.ids, starts, meta.slots, hidden)
        staged, self._staged = self._staged, None
        if staged is not None and staged[0] == meta.batch_id:
            views = staged[1]
        else:
            views = runner.inputs.load(meta.staged)
        out = runner.run_decode(meta.key, *views, hidden=hidden)
        return out if self.spec.is_last else out.clone()   # the next step overwrites `out`

    def begin(self, params: dict[int, SamplingParams]) -> None:
        """The last stage, as a generate call starts: each sequence's sampling params."""
        self.sampler, self.params = Sampler(), dict(params)

    def sample(self, meta: BatchMeta, logits: torch.Tensor) -> list[int]:
        """The last stage: one token per sequence of `meta` from its logits."""
        if meta.kind == "decode":
            logits = logits[torch.as_tensor(meta.rows, device=logits.device)]
        rows = [SampledRow(int(i), self.params[int(i)]) for i in meta.seq_ids]
        return self.sampler(logits, rows)
