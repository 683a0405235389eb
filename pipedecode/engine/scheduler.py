"""The scheduler: which sequences run next, and what their new tokens mean. Pure bookkeeping.

Owns the waiting queue and the running set, forming batches (a prefill of the sequences the
policy admits, or a decode of the ready running ones, grouped into micro-batches), growing
block tables, preemption by recomputation when the pool runs out, stop conditions and freeing
finished sequences. Knows nothing of tensors or models: tests drive it with token ids.

Batches are formed from *ready* sequences only (running and not in a batch handed out but not
yet post-processed), so a pipeline controller with several micro-batches in flight calls
`schedule()` once per free slot and a sequence is never in two batches at once. With
`num_slots` S > 1 a decode batch takes at most ceil(running / S) ready sequences, those ready
longest first, so micro-batches stay balanced as requests finish (TD-Pipe's work stealing).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from pipedecode.engine.block_manager import BlockManager
from pipedecode.engine.policies import Policy
from pipedecode.engine.predictor import LengthPredictor, OnlineLengthEstimator
from pipedecode.engine.sequence import Sequence, SequenceStatus, stop_check


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits. max_model_len: most tokens (prompt + output) one sequence may hold, the model's
    positions or the KV pool, whichever is smaller. num_slots: batches in flight at once (1
    on one GPU; the pipeline's micro-batches across stages)."""

    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    num_slots: int = 1
    eos_token_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "num_slots"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SchedulerConfig.{name} must be a positive integer, "
                                 f"got {value!r}")
        object.__setattr__(self, "eos_token_ids", frozenset(self.eos_token_ids))


@dataclass(frozen=True)
class ScheduledBatch:
    """One step's work. kind "prefill": every token of each sequence; "decode": the last token
    of each. micro_batches: indices into `seqs`, contiguous and in order (micro-batch j is
    seqs[a:b]); a prefill is one micro-batch. batch_id: the scheduler step that formed it."""

    kind: str
    seqs: tuple[Sequence, ...]
    micro_batches: tuple[tuple[int, ...], ...]
    batch_id: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs) if self.kind == "prefill" else len(self.seqs)


def group_micro_batches(seqs: list[Sequence],
                        num_micro_batches: int) -> tuple[tuple[int, ...], ...]:
    """Indices of `seqs` in `num_micro_batches` groups of sizes within one of each other and
    balanced KV: longest sequence first to the group holding the fewest tokens among those
    with room (PipeDecode's dispatch by sequence length). At most one group per sequence."""
    n = len(seqs)
    m = max(1, min(num_micro_batches, n))
    if m == 1:
        return (tuple(range(n)),)
    lens = [s.num_tokens for s in seqs]
    room = [n // m + (1 if j < n % m else 0) for j in range(m)]
    groups: list[list[int]] = [[] for _ in range(m)]
    held = [0] * m
    for i in sorted(range(n), key=lambda i: (-lens[i], i)):
        best = -1
        for j in range(m):                 # the group with room holding the fewest tokens
            if room[j] and (best < 0 or held[j] < held[best]):
                best = j
        groups[best].append(i)
        room[best] -= 1
        held[best] += lens[i]
    return tuple(tuple(sorted(g)) for g in groups)


class Scheduler:
    """Sequences in, batches out; `postprocess` feeds the sampled tokens back."""

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager, policy: Policy,
                 predictor: LengthPredictor | None = None, *,
                 micro_batches_for: Callable[[int, int], int] | None = None,
                 detokenize: Callable[[list[int]], str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """micro_batches_for(num_seqs, kv_tokens): micro-batches the runner's plan splits a
        decode batch into (default 1). detokenize: output ids -> text, for stop strings."""
        if config.max_model_len > block_manager.num_usable_blocks * block_manager.block_size:
            raise ValueError(f"max_model_len {config.max_model_len} exceeds the pool "
                             f"({block_manager.num_usable_blocks} blocks of "
                             f"{block_manager.block_size})")
        self.config, self.block_manager, self.policy = config, block_manager, policy
        self.predictor = predictor if predictor is not None else OnlineLengthEstimator()
        self.micro_batches_for = micro_batches_for or (lambda num_seqs, kv_tokens: 1)
        self.detokenize, self.clock = detokenize, clock
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []         # in admission order: victims from the end
        self.step = 0
        self.num_preemptions = 0
        self.prefill_tokens = 0                   # recomputed tokens included
        self.decode_tokens = 0
        self.observations = 0                     # finished requests the predictor learned
        # seq_id -> (the predictor, observations, tokens) of its last prediction
        self._predicted: dict[int, tuple[LengthPredictor, int, int]] = {}

    # ---- requests ---------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if seq.status is not SequenceStatus.WAITING or seq.num_tokens == 0:
            raise ValueError(f"sequence {seq.seq_id}: only waiting, non-empty sequences can "
                             f"be added")
        if seq.num_tokens >= self.config.max_model_len:
            raise ValueError(f"sequence {seq.seq_id}: {seq.num_tokens} tokens leave no room "
                             f"within max_model_len {self.config.max_model_len}")
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def predict(self, seq: Sequence) -> int:
        """Predicted output length of `seq`, capped by max_tokens and the length limit; exact
        where only max_tokens can stop it (ignore_eos, no stop tokens or strings). Asked
        again before the predictor has learned from another finished request, the answer is
        the one it gave (the temporal policy asks for every queued request each step)."""
        known = self._predicted.get(seq.seq_id)
        if known is not None and known[0] is self.predictor and known[1] == self.observations:
            seq.predicted_output_len = known[2]
            return known[2]
        p = seq.params
        cap = max(1, min(p.max_tokens, self.config.max_model_len - seq.num_prompt_tokens))
        if p.ignore_eos and not p.stop_token_ids and not p.stop:
            n = cap
        else:
            n = min(cap, max(1, round(self.predictor.predict(seq.prompt_token_ids))))
        seq.predicted_output_len = n
        self._predicted[seq.seq_id] = (self.predictor, self.observations, n)
        return n

    # ---- batches ----------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        """The next batch, or None when nothing is ready (all in flight, or nothing left)."""
        self.step += 1
        admitted = self.policy.admit(self)
        if admitted:
            return self._prefill(admitted)
        return self._decode()

    def _prefill(self, admitted: list[Sequence]) -> ScheduledBatch:
        for seq in admitted:
            if not self.waiting or self.waiting[0] is not seq:
                raise RuntimeError(f"policy {self.policy.name} admitted sequence {seq.seq_id} "
                                   f"out of queue order")
            self.waiting.popleft()
            if seq.predicted_output_len is None:
                self.predict(seq)
            self.block_manager.allocate(seq)
            seq.status, seq.in_batch = SequenceStatus.RUNNING, self.step
            self.running.append(seq)
        self.prefill_tokens += sum(s.num_tokens for s in admitted)
        return ScheduledBatch("prefill", tuple(admitted), (tuple(range(len(admitted))),),
                              self.step)

    def _decode(self) -> ScheduledBatch | None:
        # The per-step hot path (hundreds of sequences): plain attribute reads, no properties.
        ready = [s for s in self.running if s.in_batch is None]
        if not ready:
            return None
        pending = deque(self._share(ready))
        scheduled: list[Sequence] = []
        bm = self.block_manager
        block_size = bm.block_size
        while pending:
            seq = pending.popleft()
            if len(seq.block_table) * block_size < len(seq.token_ids):   # bm.needs_block
                while not bm.num_free_blocks:
                    victim = self._victim(scheduled)
                    self._preempt(victim)
                    if victim is seq:
                        break
                    if victim in pending:
                        pending.remove(victim)
                if seq.status is not SequenceStatus.RUNNING:
                    continue
                bm.append_slot(seq)
            scheduled.append(seq)
        if not scheduled:
            return None
        kv_tokens = sum([len(s.token_ids) for s in scheduled])
        groups = group_micro_batches(scheduled, self.micro_batches_for(len(scheduled), kv_tokens))
        if len(groups) == 1:
            seqs, micro = scheduled, groups
        else:
            seqs, micro, start = [], [], 0
            for group in groups:
                seqs.extend(scheduled[i] for i in group)
                micro.append(tuple(range(start, start + len(group))))
                start += len(group)
        step = self.step
        for seq in seqs:
            seq.in_batch = step
        self.decode_tokens += len(seqs)
        return ScheduledBatch("decode", tuple(seqs), tuple(micro), step)

    def _share(self, ready: list[Sequence]) -> list[Sequence]:
        """The ready sequences this decode batch takes, in admission order."""
        slots = self.config.num_slots
        if slots == 1:
            return list(ready)
        target = -(-len(self.running) // slots)
        order = {id(s): i for i, s in enumerate(ready)}
        first = sorted(ready, key=lambda s: (s.ready_since, order[id(s)]))[:target]
        return sorted(first, key=lambda s: order[id(s)])

    def _victim(self, scheduled: list[Sequence]) -> Sequence:
        """The most recently admitted running sequence not in flight nor already given a
        slot in the batch being formed (the sequence asking qualifies itself)."""
        taken = {id(s) for s in scheduled}
        return next(s for s in reversed(self.running)
                    if not s.in_flight and id(s) not in taken)

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        self.running.remove(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    # ---- results ----------------------------------------------------------------------------
    def postprocess(self, batch: ScheduledBatch, token_ids: list[int]) -> list[Sequence]:
        """Append each sequence's new token, finish those that stop; the finished ones."""
        if len(token_ids) != len(batch.seqs):
            raise ValueError(f"{len(token_ids)} tokens for a batch of {len(batch.seqs)}")
        running, batch_id = SequenceStatus.RUNNING, batch.batch_id
        stale = [s.seq_id for s in batch.seqs
                 if s.status is not running or s.in_batch != batch_id]
        if stale:
            raise RuntimeError(f"sequences {stale} are not in flight in batch {batch.batch_id}")
        now, finished, step = self.clock(), [], self.step
        eos, max_len, detokenize = (self.config.eos_token_ids, self.config.max_model_len,
                                    self.detokenize)
        for seq, token in zip(batch.seqs, token_ids):
            seq.in_batch, seq.ready_since = None, step
            seq.append(token)
            if seq.first_token_time_s is None:
                seq.first_token_time_s = now
            stop = stop_check(seq, eos, max_len, detokenize)
            if stop is not None:
                self._finish(seq, stop[0], stop[1], now)
                finished.append(seq)
        return finished

    def _finish(self, seq: Sequence, reason: str, stop_reason, now: float) -> None:
        self.block_manager.free(seq)
        self.running.remove(seq)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        seq.stop_reason = stop_reason
        seq.finish_time_s = now
        self._predicted.pop(seq.seq_id, None)
        if not seq.params.ignore_eos:
            self.predictor.observe(seq.num_prompt_tokens, seq.num_output_tokens)
            self.observations += 1

    def abort_all(self, message: str) -> list[Sequence]:
        """Finish every unfinished sequence with reason "error" (blocks freed); them."""
        now, aborted = self.clock(), [*self.running, *self.waiting]
        for seq in aborted:
            if seq.block_table:
                self.block_manager.free(seq)
            seq.in_batch = None
            seq.status, seq.finish_reason, seq.error = SequenceStatus.FINISHED, "error", message
            seq.finish_time_s = now
        self.running, self.waiting = [], deque()
        return aborted
