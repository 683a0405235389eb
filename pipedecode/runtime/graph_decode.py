"""A TorchDynamo decode graph of a transformers model, served by the executor.

Owns `GraphDecode`: what the `torch.compile` backend runs for a decode graph that `recognize`
(graph_layout.py) maps, and `NotServedWarning`, how a decode step that runs as the graph's
stages instead says why. `GraphDecode` packs the weights, plans the batch, and on each call runs
the step on the executor with transformers' own cache tensors, written in place, and returns the
logits as the graph would. Before each step it checks the packed weights against the graph's
parameter tensors (identity, storage and version counter of each: a few hundred int reads;
repacked where one changed), and on the GPU (one host sync, as transformers' generate makes each
step anyway) that the mask is what a left-padded cache gives, [start_b, slot] per request; any
other mask runs the graph's stages instead, with a warning the first time.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import torch

from pipedecode.runtime.graph_layout import DecodeGraph, is_prefill, recognize

__all__ = ["DecodeGraph", "GraphDecode", "NotServedWarning", "is_prefill", "recognize",
           "warn_not_served"]


class NotServedWarning(UserWarning):
    """A decode step runs as the graph's stages, not on the executor; the message says why."""


def warn_not_served(reason: str) -> None:
    """Say, as a NotServedWarning, that a decode step runs as the graph's stages, and why."""
    warnings.warn(f"pipedecode: the decode step runs as the graph's stages, not on the "
                  f"executor: {reason}", NotServedWarning, stacklevel=2)


def _contiguous(schedule: Any) -> Any:
    """The schedule with its micro-batches as consecutive request ranges of the same sizes: the
    cache rows belong to transformers, in its order, so the executor cannot regroup them."""
    if schedule is None or not getattr(schedule, "micro_batches", None):
        return schedule
    ordered = sorted(schedule.micro_batches, key=lambda m: m.index)
    lens = [c for mb in ordered for c in mb.context_lens]
    start, groups = 0, []
    for mb in ordered:
        n = len(mb.request_ids)
        groups.append(dataclasses.replace(mb, request_ids=tuple(range(start, start + n)),
                                          context_lens=tuple(lens[start:start + n])))
        start += n
    return dataclasses.replace(schedule, micro_batches=tuple(groups))


class GraphDecode:
    """The decode graph's callable: the executor where it serves the call, `fallback` elsewhere."""

    def __init__(self, layout: DecodeGraph, fallback: Callable, *, device: Any = None,
                 plan: bool = True) -> None:
        """fallback: the graph's stages (exact). device: the profile to plan for (None: the GPU this runs on). plan=False:
        always sequential (tests)."""
        self.layout, self.fallback, self.device, self.plan = layout, fallback, device, plan
        self.executor = None
        self._cache_key: tuple | None = None
        self._at: torch.Tensor | None = None       # [1, max_context] positions, made once
        self._packing = None                       # weights.Packing of the graph's parameters
        self._sources: list[int] | None = None     # their argument indices, in its order
        self.calls = {"executor": 0, "fallback": 0}
        self.last_reason: str | None = None
        self._warned: set[str] = set()

    def _weights(self, args):
        """The packed weights of the parameters this call passes, repacked where they changed
        since the last call (a few hundred int reads when nothing did)."""
        if self._packing is None:
            from pipedecode.runtime.weights import ROPE_SOURCE, packing

            g = self.layout
            named = {name: i for name, i in g.params}
            named[ROPE_SOURCE] = g.inv_freq
            self._packing = packing({n: args[i] for n, i in named.items()}, g.shape,
                                    rms_eps=g.rms_eps, attention_scaling=g.attention_scaling,
                                    max_positions=g.max_context)
            self._sources = [named[n] for n in self._packing.names]
        return self._packing.current([args[i] for i in self._sources])

    def _executor_for(self, args, starts: torch.Tensor):
        from pipedecode.runtime.engine import plan_for
        from pipedecode.runtime.executor import Executor
        from pipedecode.runtime.step import DecodeStep

        g = self.layout
        weights = self._weights(args)
        keys = [args[i] for i in g.keys]
        values = [args[i] for i in g.values]
        key = tuple(t.data_ptr() for t in keys[:1] + values[:1]) + (g.batch_size,)
        if self.executor is not None and key == self._cache_key and \
                self.executor.step.weights is weights:
            return self.executor
        schedule, reason = None, None
        if self.plan:
            lens = (g.max_context - starts).tolist()     # each request's length at the cache's end
            schedule, reason = plan_for(weights, lens, self.device)
        self.executor = None                  # the old one's buffers go before the new ones come
        step = DecodeStep(weights, g.batch_size, g.max_context, caches=(keys, values),
                          left_padded=True)
        self.executor = Executor(weights, g.batch_size, g.max_context,
                                 schedule=_contiguous(schedule), step=step, autotune=True)
        self.executor.fallback_reason = self.executor.fallback_reason or reason
        self._cache_key = key
        return self.executor

    def _step_inputs(self, args):
        """(tokens, context_lens, rope_positions, starts), or None when the mask is not a
        left-padded cache's [start_b, slot] per request."""
        g = self.layout
        counters = torch.stack([args[i] for i in g.counters])
        slot = counters[0]
        positions = args[g.position_ids][:, 0]
        starts = slot - positions
        mask = args[g.attention_mask]
        if mask.dim() != 4 or mask.shape[0] != g.batch_size or mask.shape[-1] != g.max_context:
            return None
        allowed = mask[:, 0, -1, :]
        allowed = allowed if allowed.dtype == torch.bool else allowed == 0
        if self._at is None or self._at.device != mask.device:
            self._at = torch.arange(g.max_context, device=mask.device)[None, :]
        expected = (self._at >= starts[:, None]) & (self._at <= slot)
        ok = (allowed == expected).all() & (counters == slot).all() & (starts >= 0).all() & \
            (slot < g.max_context)
        if not bool(ok):
            return None
        i32 = torch.int32
        return (args[g.input_ids][:, 0], (slot + 1).expand(g.batch_size).to(i32),
                positions.to(i32), starts.to(i32))

    @torch.no_grad()
    def __call__(self, *args):
        inputs = self._step_inputs(args)
        if inputs is None:
            self.calls["fallback"] += 1
            self.last_reason = "the attention mask is not a left-padded static cache's"
            if self.last_reason not in self._warned:
                self._warned.add(self.last_reason)
                warn_not_served(self.last_reason)
            return self.fallback(*args)
        tokens, context_lens, rope_positions, starts = inputs
        executor = self._executor_for(args, starts)
        executor.set_inputs(tokens, context_lens, rope_positions=rope_positions,
                            context_starts=starts)
        logits = executor.run()
        for i in self.layout.counters:        # what StaticCache.update does in the graph
            args[i].add_(1)
        self.calls["executor"] += 1
        g = self.layout
        return (logits.view(g.batch_size, 1, -1).to(g.logits_dtype, copy=True),)
