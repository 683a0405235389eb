"""What one micro-batch costs on the simulated GPUs: its time on each server it passes through.

Owns `StagePipeline` (N pipeline stages, the activation transfer to the next stage after each,
and the token ids' return to the controller after the last) and `TensorParallel` (every layer
on N GPUs at once, two ring all-reduces per layer). Both price from the one `CostModel` and a
`Link`, and answer `service(batch) -> Service`: the time on each server in the order the
micro-batch visits them, and the GPU compute time it holds. Knows nothing of scheduling, of
the clock or of host time: `pipedecode.sim.loop` queues micro-batches on the servers and
charges the controller's host work.

Pricing. A decode micro-batch of n sequences holding kv tokens runs the runner's bucket of
r >= n rows (`EngineCosts.decode_rows`; padded rows hold one token each): one layer
`sequential_layer_us(r, kv + r - n)`, the head `head_us(r)` and the greedy sampling of r rows
(`EngineCosts.sampling_us`). A prefill of prompts (recomputed ones at their full length):
`EngineCosts.prefill_us` (the cost model's `prefill_us(lens)`; on one GPU, a prefill a
CUDA-graph bucket holds with its GEMMs over the padded tokens; else, eager, at least its
kernels' launch time on the host), its head `head_us(len(lens))` and the sampling of
len(lens) rows, its layers sharing the rest equally (Llama's layers all have one shape). Pipeline stage i:
layers[i] layers, plus the head and the sampling on the last. Transfers: [hidden, residual]
of every row, hidden_size x dtype bytes each, over the link to the next stage (latency + bytes
/ bandwidth, overlapped with compute: each link is its own server); the controller's
per-micro-batch metadata is assumed sent ahead and off the critical path. Tensor parallel (an
analytic ESTIMATE, optimistic for it): the whole step's time / N (every kernel, head, sampling
and launch included, splits perfectly; its small prefills from CUDA graphs, as on one GPU)
plus, per layer, two all-reduces of tokens x hidden x
dtype bytes (`ring_allreduce_us`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipedecode.engine.scheduler import ScheduledBatch
from pipedecode.planner.cost import CostModel
from pipedecode.sim.engine_costs import EngineCosts
from pipedecode.sim.layout import PipelineLayout, TensorLayout
from pipedecode.sim.links import Link, ring_allreduce_us, transfer_us

TOKEN_ID_BYTES = 8          # int64 token ids back to the controller
_MAX_PREFILLS = 4096        # remembered prefill prices (the queue's recent prefixes)


@dataclass(frozen=True)
class MemoCostModel(CostModel):
    """The CostModel with prices it is asked for again and again remembered: pre_attn,
    post_attn and the head depend only on (tokens, SMs), a simulation asks for the same few
    thousand counts millions of times; the temporal policy prices the same waiting prompts'
    prefill at every decode step until the queue moves. Every price is CostModel's own;
    decode attention (which depends on the KV tokens too) is computed each time."""

    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _prefills: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def prefill_us(self, prompt_lens: list[int]) -> float:
        key = tuple(prompt_lens)
        value = self._prefills.get(key)
        if value is None:
            if len(self._prefills) >= _MAX_PREFILLS:
                self._prefills.clear()
            value = self._prefills[key] = super().prefill_us(prompt_lens)
        return value

    def pre_attn_us(self, tokens: float, sm_count: float) -> float:
        return self._remembered("pre_attn", super().pre_attn_us, tokens, sm_count)

    def post_attn_us(self, tokens: float, sm_count: float) -> float:
        return self._remembered("post_attn", super().post_attn_us, tokens, sm_count)

    def head_us(self, tokens: float) -> float:
        return self._remembered("head", super().head_us, tokens)

    def _remembered(self, name: str, price, *args) -> float:
        key = (name, *args)
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = price(*args)
        return value


@dataclass(frozen=True)
class Service:
    """servers_us: time on each server in visiting order; compute_us: GPU-time computing (summed
    over the GPUs the micro-batch occupies), the rest of their time is bubble or transfer."""

    servers_us: np.ndarray
    compute_us: float


def batch_tokens(batch: ScheduledBatch) -> tuple[int, int, list[int]]:
    """(tokens the batch feeds, KV tokens it reads, prefill prompt lengths or [])."""
    if batch.kind == "prefill":
        lens = [s.num_tokens for s in batch.seqs]
        return sum(lens), 0, lens
    return len(batch.seqs), sum(s.num_tokens for s in batch.seqs), []


def _whole_model_us(cost: CostModel, engine: EngineCosts, batch: ScheduledBatch, *,
                    graphs: bool) -> tuple[float, float, int]:
    """(the batch on the whole model on one GPU, its head with the sampling, tokens through
    the layers: a decode step's padded rows included). graphs: whether a small prefill may
    replay a CUDA graph (the one-GPU runner; a pipeline stage prefills eagerly)."""
    tokens, kv_tokens, lens = batch_tokens(batch)
    if lens:
        sample = engine.sampling_us(cost, len(lens))
        full = engine.prefill_us(cost, lens, graphs=graphs)
        return full + sample, cost.head_us(len(lens)) + sample, tokens
    rows = engine.decode_rows(tokens)
    sample = engine.sampling_us(cost, rows)
    return (cost.sequential_step_us(rows, kv_tokens + rows - tokens) + sample,
            cost.head_us(rows) + sample, rows)


class StagePipeline:
    """Servers: stage 0, link 0->1, stage 1, ..., stage N-1, return link (N > 1); one server
    (the GPU) for N = 1, which then prices as the one-GPU engine: the cost model and `engine`'s
    padding and sampling."""

    def __init__(self, layout: PipelineLayout, cost: CostModel, link: Link,
                 engine: EngineCosts | None = None) -> None:
        self.layout, self.cost, self.link = layout, cost, link
        self.engine = engine or EngineCosts.off()
        n = layout.num_stages
        self.num_gpus = n
        self.num_servers = 1 if n == 1 else 2 * n
        self._layers = np.array(layout.layers, dtype=np.float64)
        self._last = np.zeros(n)
        self._last[-1] = 1.0
        m = cost.model
        self._activation_bytes = 2 * m.hidden_size * m.dtype_bytes        # per token

    def stage_us(self, batch: ScheduledBatch) -> np.ndarray:
        """The batch's compute time on each stage."""
        return self._stages(*_whole_model_us(self.cost, self.engine, batch,
                                             graphs=self.layout.num_stages == 1)[:2])

    def _stages(self, full: float, head: float) -> np.ndarray:
        if self.layout.num_stages == 1:
            return np.array([full])
        layer = (full - head) / self.cost.model.num_layers
        return self._layers * layer + self._last * head

    def service(self, batch: ScheduledBatch) -> Service:
        full, head, tokens = _whole_model_us(self.cost, self.engine, batch,
                                             graphs=self.layout.num_stages == 1)
        stages = self._stages(full, head)
        if self.layout.num_stages == 1:
            return Service(stages, float(stages[0]))
        servers = np.empty(self.num_servers)
        servers[0::2] = stages
        servers[1:-1:2] = transfer_us(self.link, tokens * self._activation_bytes)
        servers[-1] = transfer_us(self.link, len(batch.seqs) * TOKEN_ID_BYTES)
        return Service(servers, float(stages.sum()))


class TensorParallel:
    """One server: the N GPUs of a tensor-parallel group run each micro-batch together."""

    def __init__(self, layout: TensorLayout, cost: CostModel, link: Link,
                 engine: EngineCosts | None = None) -> None:
        self.layout, self.cost, self.link = layout, cost, link
        self.engine = engine or EngineCosts.off()
        self.num_gpus = layout.num_gpus
        self.num_servers = 1

    def allreduce_us(self, tokens: int) -> float:
        """The two all-reduces of one layer (after attention's o_proj and after the MLP)."""
        m = self.cost.model
        return 2 * ring_allreduce_us(self.link, tokens * m.hidden_size * m.dtype_bytes,
                                     self.num_gpus)

    def service(self, batch: ScheduledBatch) -> Service:
        full, _, tokens = _whole_model_us(self.cost, self.engine, batch, graphs=True)
        n = self.num_gpus
        compute = full / n
        comm = self.cost.model.num_layers * self.allreduce_us(tokens) if n > 1 else 0.0
        return Service(np.array([compute + comm]), compute * n)
