"""The paged model runner: pipedecode's kernels behind the engine's `ModelRunner` contract.

Owns `PagedModelRunner`, what `LLM` builds by default (engine/runner.py `PAGED_RUNNER`). At
set-up it packs the model's weights (the model's `Packing`, shared with `pipedecode.compile`),
sizes the block pool (runner_memory.py) and allocates one `PagedKVCache` and one set of decode
buffers, for the largest padded batch, whose first rows every smaller step uses. Then:

- `prefill(seqs)`: one varlen batch (runtime/prefill.py) on the whole GPU, every token's K/V
  into its sequence's blocks; the logits of each last token. With graphs, a batch of up to
  1024 tokens replays its bucket's CUDA graph (prefill_graphs.py), since an eager one that
  small waits on the host's kernel launches.
- `decode(seqs, micro_batches)`: one step on the executor for the batch's bucket
  (runner_plans.py), padded with null-block rows. Sequential steps of a bucket share one
  executor; an interleaved split (micro-batches x rows each x SM split) has its own, whose
  micro-batch j holds the scheduler's group j in its own row range, padded to the split's
  rows. Executors, and so their CUDA graphs, are made lazily at a bucket's first step: a run
  uses a handful of the buckets, and capturing all of them up front would cost seconds.
  The host work of a step is numpy over preallocated arrays and one copy (runner_inputs.py).
- `num_micro_batches(num_seqs, kv_tokens)`: the bucket's plan (runner_plans.py); the
  executor's measured guard (`autotune`) keeps sequential where interleaving measures slower,
  and the plan says so from then on. `describe()` gives, per executor, its mode, SM split,
  micro-batch rows and why it runs sequentially.

On a CPU the same code runs the torch kernels without graphs; an interleaved plan (given by a
`planner`, since there are no SM partitions) runs its slot program serially (`run_serial`),
which exercises the micro-batch rows and the program order. Knows nothing of scheduling: the
engine's scheduler fills the block tables and forms the micro-batches.

A pipeline stage (pipedecode.distributed) is this runner on the weights of a layer range
(`weights=`, see step.py): each step has a host half that only the controller's stage runs on
sequences (`prefill_inputs`; `decode_plan` + `StepInputs.stage`), whose arrays every stage
receives, and a device half every stage runs on those arrays and the residual stream the
previous stage sent (`run_prefill`, `run_decode`): `prefill` and `decode` are the two halves.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence as Seq

import numpy as np
import torch

from pipedecode.engine.runner import RunnerConfig
from pipedecode.errors import PipedecodeError
from pipedecode.runtime.executor import Executor, run_serial
from pipedecode.runtime.kv_cache import PagedKVCache
from pipedecode.runtime.ops import KernelSet, kernel_set
from pipedecode.runtime.prefill import prefill
from pipedecode.runtime.prefill_graphs import PrefillGraphs, capturable
from pipedecode.runtime.program import manual_schedule
from pipedecode.runtime.runner_inputs import StepInputs
from pipedecode.runtime.runner_memory import cpu_kv_bytes, gpu_kv_bytes, usable_kv_bytes
from pipedecode.runtime.runner_plans import (BucketPlans, Planner, bucket_for, bucket_sizes,
                                             micro_batch_rows)
from pipedecode.runtime.step import DecodeStep
from pipedecode.runtime.weights import PackedWeights, hf_packing, hf_sources

MAX_MICRO_BATCHES = 4      # the buffers hold any split up to this many micro-batches


class PagedModelRunner:
    """A transformers Llama-family model on one device, paged; see the module docstring."""

    def __init__(self, model: torch.nn.Module, config: RunnerConfig, *,
                 kernels: KernelSet | str = "auto", use_graphs: bool = True,
                 planner: Planner | None = None, keep_logits: bool = False,
                 weights: PackedWeights | None = None,
                 num_blocks_of: Callable[[int], int] | None = None,
                 prefill_graphs: bool = True) -> None:
        """kernels: a KernelSet or its name (auto: hybrid on CUDA, torch on the CPU).
        use_graphs: replay CUDA graphs (CUDA only). planner(shape, profile, context_lens) ->
        Schedule: who decides interleaving (default pipedecode.planner.plan; a
        `program.manual_schedule` forces a split, e.g. in tests). keep_logits: keep every
        logits row, float32 on the CPU, in `kept_logits[(seq_id, tokens before it)]` (checks
        against a reference; it syncs each step). weights: a pipeline stage's weights (its
        layers, see step.py) in place of packing the whole model. num_blocks_of(blocks): the
        pool size to use given the blocks this runner's memory holds (a pipeline's stages
        agree on the least). prefill_graphs: replay prefills of up to 1024 tokens and 64
        prompts from CUDA graphs (with use_graphs; prefill_graphs.py)."""
        self.config = config
        self.packing = hf_packing(model) if weights is None else None
        self._model = model
        weights = self.weights = self.packing.weights if weights is None else weights
        self._num_blocks_of = num_blocks_of
        self.device = weights.device
        self.kernels = kernel_set(kernels, self.device) if isinstance(kernels, str) else kernels
        self.use_graphs = use_graphs and self.device.type == "cuda"
        self.block_size = config.block_size
        self.max_model_len = min(int(model.config.max_position_embeddings),
                                 weights.max_positions)
        self.shape = dataclasses.replace(weights.shape, dtype_bytes=weights.embed.element_size())
        self.sizes = bucket_sizes(config.max_num_seqs)
        self.max_rows = max(m * micro_batch_rows(config.max_num_seqs, m, self.sizes)
                            for m in range(1, MAX_MICRO_BATCHES + 1))
        self.memory: dict[str, Any] = {}
        self.num_blocks = self._num_blocks()
        self.cache = PagedKVCache.for_weights(weights, self.num_blocks, self.block_size)
        # no sequence holds more than the pool: block tables of that many columns
        self.max_context = min(self.max_model_len, (self.num_blocks - 1) * self.block_size)
        self._rows = DecodeStep(weights, self.max_rows, self.max_context,
                                kernels=self.kernels, paged=self.cache)
        self.inputs = StepInputs(self.max_rows, self._rows.block_tables.shape[1], self.device,
                                 table_capacity=2 * self.max_rows + 64)
        # small prefills from CUDA graphs (a whole model's, with graphs on and a kernel set
        # whose prefill a graph can capture; prefill_graphs.py)
        whole = weights.embed.shape[0] > 0 and weights.lm_head.shape[0] > 0
        self.prefill_graphs = PrefillGraphs(weights, self.cache, self.kernels) \
            if self.use_graphs and prefill_graphs and whole and capturable(self.kernels) \
            else None
        self.plans = BucketPlans(self.shape, config.profile, self.sizes,
                                 interleave=config.interleave, planner=planner)
        self._plans_by: dict[bool, BucketPlans] = {}    # the other setting's, kept by reuse
        self.executors: dict[tuple, Executor] = {}
        self._streams: dict[tuple[int, int], Any] = {}
        self._splits: dict[tuple, tuple[np.ndarray, torch.Tensor]] = {}
        self.last_executor: Executor | None = None
        self.steps_by_executor: dict[tuple, int] = {}
        self.kept_logits: dict[tuple[int, int], torch.Tensor] | None = \
            {} if keep_logits else None

    @classmethod
    def factory(cls, **options):
        """A RunnerFactory with these options: `LLM(model, runner=PagedModelRunner.factory(
        planner=...))`."""
        return lambda model, config: cls(model, config, **options)

    # ---- set-up -----------------------------------------------------------------------------
    def _num_blocks(self) -> int:
        cfg, w = self.config, self.weights
        if cfg.kv_cache_memory_bytes is not None:
            pool, how = cfg.kv_cache_memory_bytes, "kv_cache_memory"
        elif self.device.type != "cuda":
            pool = cpu_kv_bytes(w, cfg.max_num_seqs, self.max_model_len, self.block_size)
            how = "CPU default"
        else:
            pool, found = gpu_kv_bytes(
                w, self.kernels, max_rows=self.max_rows, max_model_len=self.max_model_len,
                prefill_tokens=max(cfg.max_num_batched_tokens, self.max_model_len),
                block_size=self.block_size)
            self.memory.update(found)
            usable = usable_kv_bytes(w, cfg.max_num_seqs, self.max_model_len, self.block_size)
            pool, how = (pool, "free GPU memory") if pool <= usable else \
                (usable, "every seat at max_model_len (less than the free GPU memory)")
        blocks = PagedKVCache.blocks_for_memory(max(pool, 0), self.shape, self.block_size,
                                                w.dtype, num_layers=len(w.layers))
        if self._num_blocks_of is not None:     # every stage calls it, even one short of room
            held, blocks = blocks, self._num_blocks_of(blocks)
            how += f"; the least of the pipeline's stages (this one holds {held})"
        self.memory.update(pool_bytes=pool, sized_by=how, num_blocks=blocks)
        if blocks < 2:
            raise PipedecodeError(
                f"the KV cache ({how}: {pool / 2**20:.1f} MiB) holds {blocks} blocks of "
                f"{self.block_size} tokens; it needs at least 2 (block 0 is the null block). "
                f"Give it more memory (kv_cache_memory) or lower max_num_seqs / "
                f"max_num_batched_tokens")
        return blocks

    def reuse(self, model: torch.nn.Module, config: RunnerConfig) -> "PagedModelRunner":
        """This runner, as a RunnerFactory, for another LLM of the same model whose config
        differs at most in `interleave` (pool, buffers and captured graphs kept; the plans
        made anew where interleave changes): `LLM(model, interleave=False, runner=runner.reuse)`
        (benchmarks comparing settings on one pool)."""
        if model is not self._model:
            raise ValueError("a runner serves the model it was built for; build another")
        mine = dataclasses.replace(self.config, interleave=config.interleave)
        if config != mine:
            raise ValueError(f"a runner built for {self.config} cannot serve {config}; only "
                             f"interleave may differ")
        if config.interleave != self.config.interleave:
            self._plans_by[self.plans.interleave] = self.plans
            self.plans = self._plans_by.get(config.interleave) or BucketPlans(
                self.shape, config.profile, self.sizes, interleave=config.interleave,
                planner=self.plans.planner)
        self.config = config
        return self

    def sync_weights(self) -> bool:
        """Bring the packed weights up to the model's parameters (repacked in place where they
        changed in place). False when a parameter was replaced or moved: the packing is then
        new and this runner, built on the old one, must be rebuilt."""
        if self.packing is None:
            raise ValueError("a pipeline stage's weights were sliced from the model once and "
                             "do not follow it; rebuild the LLM after changing the weights")
        return self.packing.current(self.packing.sources_of(hf_sources(self._model))) \
            is self.weights

    # ---- the protocol -----------------------------------------------------------------------
    def num_micro_batches(self, num_seqs: int, kv_tokens: int) -> int:
        return self.plans.micro_batches(num_seqs, kv_tokens)

    @torch.no_grad()
    def prefill(self, seqs: Seq) -> torch.Tensor:
        logits = self.run_prefill(*self.prefill_inputs(seqs))
        return logits if self.kept_logits is None else self._keep(seqs, logits)

    def prefill_inputs(self, seqs: Seq) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token ids int64 [tokens], prompt bounds int32 [prompts + 1], flat KV slots int64
        [tokens]) of a prefill of every token of `seqs`: the host half."""
        lens = np.fromiter((len(s.token_ids) for s in seqs), dtype=np.int64, count=len(seqs))
        tables = self.inputs.tables
        tables.make_room(len(seqs))
        rows = np.array([tables.write(s.seq_id, s.block_table) for s in seqs])
        starts = np.concatenate(([0], np.cumsum(lens)))
        which = np.repeat(np.arange(len(seqs)), lens)          # [tokens]: its sequence
        positions = np.arange(starts[-1]) - starts[:-1][which]
        blocks = tables.table[rows[which], positions // self.block_size].astype(np.int64)
        slots = blocks * self.block_size + positions % self.block_size
        ids = np.fromiter((t for s in seqs for t in s.token_ids), dtype=np.int64,
                          count=int(starts[-1]))
        return ids, starts.astype(np.int32), slots

    @torch.no_grad()
    def run_prefill(self, ids: np.ndarray, starts: np.ndarray, slots: np.ndarray,
                    hidden: torch.Tensor | None = None) -> torch.Tensor:
        """The device half: logits of each prompt's last token [prompts, vocab], or (a stage
        before the last) the residual stream [tokens, hidden] float32; `hidden` is the
        previous stage's (a stage after the first)."""
        if hidden is None and self.prefill_graphs is not None:
            logits = self.prefill_graphs.run(ids, starts, slots)
            if logits is not None:
                return logits
        dev = self.device
        return prefill(self.weights, self.cache, self.kernels, torch.from_numpy(ids).to(dev),
                       torch.from_numpy(starts).to(dev), torch.from_numpy(slots).to(dev),
                       hidden=hidden)

    @torch.no_grad()
    def decode(self, seqs: Seq, micro_batches: tuple[tuple[int, ...], ...]) -> torch.Tensor:
        key, rows_np, index = self.decode_plan(len(seqs), micro_batches)
        tokens, lens, tables = self.inputs.stage(seqs, self.executor(key).step.batch_size,
                                                 rows_np)
        logits = self.run_decode(key, tokens, lens, tables)
        logits = logits[:len(seqs)] if index is None else logits[index]
        return logits if self.kept_logits is None else self._keep(seqs, logits)

    def decode_plan(self, n: int, micro_batches: tuple[tuple[int, ...], ...]
                    ) -> tuple[tuple, np.ndarray | None, torch.Tensor | None]:
        """(executor key, the buffer row of each sequence, its device index; both None when
        the sequences fill the first rows) of a decode step of `n` sequences so grouped."""
        if len(micro_batches) == 1:
            return ("sequential", bucket_for(n, self.sizes)), None, None
        return self._split(n, micro_batches)

    @torch.no_grad()
    def run_decode(self, key: tuple, tokens: torch.Tensor, lens: torch.Tensor,
                   tables: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """The device half of a step on the executor `key` over its rows: logits [rows,
        vocab] in buffer-row order, or (a stage before the last) the residual stream [rows,
        hidden] float32, a view of the step's buffer that the next step overwrites. `hidden`
        [rows, hidden] float32: the previous stage's (a stage after the first)."""
        executor = self.executor(key)
        step = executor.step
        step.set_inputs(tokens, lens, block_tables=tables)
        if hidden is not None:
            step.hidden_in.copy_(hidden)
        if executor.schedule is None or self.device.type == "cuda":
            executor.run()
            if executor.schedule is not None:
                self._note_sequential(executor)
        else:                       # interleaved on the CPU: its slot program, serially
            run_serial(step, executor.program, executor.layout)
        self.last_executor = executor
        self.steps_by_executor[key] = self.steps_by_executor.get(key, 0) + 1
        return step.output

    def _keep(self, seqs: Seq, logits: torch.Tensor) -> torch.Tensor:
        rows = logits.detach().to("cpu", torch.float32, copy=True)   # never a view of a step's buffer
        for seq, row in zip(seqs, rows):
            self.kept_logits[(seq.seq_id, len(seq.token_ids))] = row
        return logits

    # ---- executors --------------------------------------------------------------------------
    def _step(self, rows: int) -> DecodeStep:
        return DecodeStep(self.weights, rows, self.max_context, kernels=self.kernels,
                          paged=self.cache, rows_of=self._rows)

    def executor(self, key: tuple) -> Executor:
        """The executor of `key`: ("sequential", rows) or ("interleaved", micro-batches, rows
        each, memory SMs, compute SMs), made at its first step."""
        executor = self.executors.get(key)
        if executor is not None:
            return executor
        kind, rows = key[0], key[1] * (key[2] if key[0] == "interleaved" else 1)
        if kind not in ("sequential", "interleaved") or not 0 < rows <= self.max_rows:
            raise ValueError(f"executor {key!r}: sequential or interleaved over 1..."
                             f"{self.max_rows} rows")
        if kind == "sequential":
            executor = Executor(self.weights, rows, self.max_context, step=self._step(rows),
                                use_graphs=self.use_graphs)
        else:
            executor = self._interleaved(*key[1:])
        self.executors[key] = executor
        return executor

    def _split(self, n: int, micro_batches) -> tuple[tuple, np.ndarray, torch.Tensor]:
        """The executor key of this split, the buffer row of each sequence, its device index."""
        m = len(micro_batches)
        each = micro_batch_rows(n, m, self.sizes)
        sizes = tuple(len(g) for g in micro_batches)
        if m > MAX_MICRO_BATCHES or max(sizes) > each or min(sizes) < 1:
            raise ValueError(f"micro-batches of sizes {list(sizes)} for {n} sequences: at most "
                             f"{MAX_MICRO_BATCHES}, non-empty and balanced")
        plan = self.plans.last(n)
        if plan is not None and plan.micro_batches == m:
            key = ("interleaved", m, each, plan.memory_sms, plan.compute_sms)
        else:                       # a split no plan asked for: sequential over its rows
            key = ("sequential", m * each)
        found = self._splits.get((each, sizes))
        if found is None:
            rows = np.concatenate([np.arange(j * each, j * each + k) for j, k in enumerate(sizes)])
            found = self._splits[(each, sizes)] = (rows, torch.as_tensor(rows, device=self.device))
        return key, found[0], found[1]

    def _interleaved(self, m: int, each: int, memory_sms: int, compute_sms: int) -> Executor:
        rows = m * each
        groups = [list(range(j * each, (j + 1) * each)) for j in range(m)]
        schedule = manual_schedule(self.shape, [1] * rows, groups, memory_sms, compute_sms)
        executor = Executor(self.weights, rows, self.max_context, schedule=schedule,
                            step=self._step(rows), use_graphs=self.use_graphs, autotune=True,
                            streams=self._streams.get((memory_sms, compute_sms)))
        if executor.streams is not None:
            self._streams[(memory_sms, compute_sms)] = executor.streams
        return executor

    def _note_sequential(self, executor: Executor) -> None:
        """After an interleaved executor's first step on a GPU: where it runs sequentially (its
        measurement found interleaving slower, or no partitions opened), plan sequential for
        that split from now on, with its reason."""
        n, each = len(executor.layout.bounds), executor.layout.bounds[0][1]
        key = (n, each, int(executor.schedule.memory_sms))
        if executor.mode == "sequential" and key not in self.plans.slower:
            self.plans.runs_sequential(key, executor.fallback_reason or "the executor runs "
                                                                        "sequentially")

    def describe(self) -> dict[str, Any]:
        """Per executor (by key), how it runs; the plans per bucket; how the pool was sized."""
        executors = {}
        for key, ex in self.executors.items():
            info = ex.describe()
            info["rows"] = ex.step.batch_size
            executors["/".join(map(str, key))] = info
        return {"executors": executors,
                "plans": {f"{rows}/{b}": p.describe()
                          for (rows, b), p in sorted(self.plans.plans.items())},
                "slower": {"/".join(map(str, k)): why for k, why in self.plans.slower.items()},
                "prefill_graphs": self.prefill_graphs.describe() if self.prefill_graphs
                else "none (eager prefills: no CUDA graphs, a pipeline stage, or the torch "
                     "kernels' prefill attention)",
                "memory": dict(self.memory), "num_blocks": self.num_blocks,
                "block_size": self.block_size, "buckets": list(self.sizes)}
