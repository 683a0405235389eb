"""Scheduling policies: which waiting requests to prefill now, behind one interface.

Owns `Policy` (`admit(scheduler) -> the waiting sequences to prefill now, [] to decode`),
`PrefillFirstPolicy` (the common engine behaviour and the baseline) and `TemporalPolicy`
(TD-Pipe: prefill and decode disaggregated in time, greedy prefill on predicted lengths,
decode-to-prefill switch by the spatial-temporal intensity comparison). Both respect the same
hard limits (`fitting_prefix`: free blocks now, max_num_seqs, the batched-token budget).
Knows nothing of tensors; the scheduler does the bookkeeping, forms decode batches and
preempts. A policy reads the scheduler's `waiting`, `running`, `block_manager`, `config` and
`predict`, and never mutates them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from pipedecode.engine.sequence import Sequence
from pipedecode.planner.cost import CostModel
from pipedecode.planner.switch import (SwitchIntensity, greedy_prefill, prefill_batches,
                                       switch_intensity)

if TYPE_CHECKING:
    from pipedecode.engine.scheduler import Scheduler

DEFAULT_KV_THRESHOLD = 0.9   # the rest is headroom for requests that outgrow their prediction


class Policy(ABC):
    name: ClassVar[str]

    @abstractmethod
    def admit(self, sched: "Scheduler") -> list[Sequence]:
        """Waiting sequences to prefill now, a prefix of `sched.waiting`; [] means decode."""


def fitting_prefix(sched: "Scheduler", token_budget: int | None) -> list[Sequence]:
    """The longest queue prefix that fits now: blocks for all its tokens, seats under
    max_num_seqs and (`token_budget`) tokens in one prefill batch. The first sequence always
    passes the token budget, so a prompt longer than the budget still runs, alone."""
    bm, seats = sched.block_manager, sched.config.max_num_seqs - len(sched.running)
    free, tokens, out = bm.num_free_blocks, 0, []
    for seq in sched.waiting:
        need = bm.blocks_for(seq.num_tokens)
        if len(out) >= seats or need > free:
            break
        if out and token_budget is not None and tokens + seq.num_tokens > token_budget:
            break
        free, tokens = free - need, tokens + seq.num_tokens
        out.append(seq)
    return out


class PrefillFirstPolicy(Policy):
    """Admit every waiting request that fits now, then decode: prefills take priority."""

    name = "prefill-first"

    def admit(self, sched: "Scheduler") -> list[Sequence]:
        return fitting_prefix(sched, sched.config.max_num_batched_tokens)


class TemporalPolicy(Policy):
    """TD-Pipe's temporal disaggregation on the engine's queue.

    Prefill phase: admit in queue order while the KV cache at everyone's predicted peak
    (running and admitted requests each hold prompt + predicted output) stays within
    `kv_threshold` of the pool, in prefill batches of at most max_num_batched_tokens; when
    the next prompt does not fit, decode. Decode phase: each step compares TD-Pipe's
    intensities (planner/switch.py) for the prompts a switch would admit now, from the cost
    model's predicted step and prefill times, and switches back to prefill when the decode
    throughput has fallen further (relative to the start of the phase) than the switch's
    bubble costs (relative to the prefill). `num_stages` > 1: the scheduler feeds a pipeline
    of that many stages, and the bubble includes their fill and drain.
    """

    name = "temporal"

    def __init__(self, cost: CostModel, *, kv_threshold: float = DEFAULT_KV_THRESHOLD,
                 switch_cost_us: float = 0.0, num_stages: int = 1) -> None:
        if not 0 < kv_threshold <= 1:
            raise ValueError(f"kv_threshold must be in (0, 1], got {kv_threshold}")
        if switch_cost_us < 0:
            raise ValueError(f"switch_cost_us must be >= 0, got {switch_cost_us}")
        if not isinstance(num_stages, int) or isinstance(num_stages, bool) or num_stages < 1:
            raise ValueError(f"num_stages must be a positive integer, got {num_stages!r}")
        self.cost, self.kv_threshold, self.switch_cost_us = cost, kv_threshold, switch_cost_us
        self.num_stages = num_stages
        self.phase = "prefill"
        self.start_rate: float | None = None        # sequences per us when decode began
        self.last_intensity: SwitchIntensity | None = None
        self.switches = 0                           # decode -> prefill switches taken

    def admit(self, sched: "Scheduler") -> list[Sequence]:
        if self.phase == "decode":
            if sched.running and not self._should_switch(sched):
                return []
            self.phase = "prefill"
            self.switches += 1 if sched.running else 0
        admitted = self._greedy(sched, sched.config.max_num_batched_tokens)
        if not admitted and not sched.running and sched.waiting:
            admitted = fitting_prefix(sched, None)[:1]   # alone, whatever its predicted peak
        if not admitted:
            self.phase = "decode"
            self.start_rate = self.rate(sched.running, sched.config.num_slots) \
                if sched.running else None
        return admitted

    def rate(self, seqs: list[Sequence], num_slots: int = 1) -> float:
        """Decode throughput of `seqs` as one batch: sequences per predicted step time (us),
        priced sequentially as the planner's switch horizon prices it (interleaving scales
        every step alike, so the ratio of two rates barely moves). With `num_slots` > 1
        micro-batches in flight (a pipeline) each step holds 1/num_slots of them."""
        kv_tokens = sum(s.num_tokens for s in seqs)
        if num_slots == 1:
            return len(seqs) / self.cost.sequential_step_us(len(seqs), kv_tokens)
        return len(seqs) / (num_slots * self.cost.sequential_step_us(len(seqs) / num_slots,
                                                                     kv_tokens / num_slots))

    def _greedy(self, sched: "Scheduler", token_budget: int | None) -> list[Sequence]:
        """The prefix that fits now (`fitting_prefix`) cut where the predicted peak would pass
        the threshold: the queue-order greedy prefill, limited to what could run at all."""
        fits = fitting_prefix(sched, token_budget)
        if not fits:
            return []
        bm = sched.block_manager
        held = sum(bm.blocks_for(s.peak_tokens()) for s in sched.running)
        budget = math.floor(self.kv_threshold * bm.num_usable_blocks)
        peaks = (bm.blocks_for(_predicted(sched, s).peak_tokens()) for s in fits)
        count, _ = greedy_prefill(held, peaks, budget)
        return fits[:count]

    def _should_switch(self, sched: "Scheduler") -> bool:
        if not sched.waiting:
            return False
        admitted = self._greedy(sched, None)
        if not admitted:
            return False
        now = self.rate(sched.running, sched.config.num_slots)
        start = self.start_rate if self.start_rate else now
        lens = [s.num_tokens for s in admitted]
        batches = prefill_batches(lens, sched.config.max_num_batched_tokens)
        self.last_intensity = switch_intensity(now, start, self.cost.prefill_us(lens),
                                               self.switch_cost_us, num_stages=self.num_stages,
                                               prefill_micro_batches=batches)
        return self.last_intensity.switch


def _predicted(sched: "Scheduler", seq: Sequence) -> Sequence:
    sched.predict(seq)
    return seq


POLICIES = {"prefill-first": PrefillFirstPolicy, "temporal": TemporalPolicy}


def make_policy(name: str, cost: CostModel | None = None, **options) -> Policy:
    """A policy by name; "temporal" needs the cost model (`options`: kv_threshold,
    switch_cost_us, num_stages)."""
    if name not in POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}; use one of {', '.join(POLICIES)}")
    if name == "temporal":
        if cost is None:
            raise ValueError("the temporal policy needs a cost model (a device profile)")
        return TemporalPolicy(cost, **options)
    if options:
        raise ValueError(f"the {name} policy takes no options, got {sorted(options)}")
    return PrefillFirstPolicy()
