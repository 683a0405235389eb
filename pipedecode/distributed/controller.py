"""The controller on rank 0: the engine's scheduler feeding the pipeline, micro-batch by
micro-batch, with `num_slots` in flight.

Owns `drive` (one generate call) and `send_end` (how a call ends, also one that runs
nothing). Scheduling is decoupled from execution: the controller calls
`Scheduler.schedule()` whenever a slot is free, prepares the micro-batch on
its own stage (the host half: prefill inputs or the staged decode rows), sends the header and
payload to every other stage, runs stage 0 (embedding and its layers) and sends the residual
stream on, and posts the receive of the micro-batch's tokens from the last stage; only when
every slot is in flight (or nothing is ready) does it wait, for the oldest micro-batch's
tokens, which it post-processes before scheduling again. On GPUs stage 0's work is queued
asynchronously, so the next micro-batch is formed while the GPUs compute. A request is never
in two micro-batches at once: the scheduler forms batches from ready sequences only.

A lost stage (a wait that timed out or whose peer closed its connection) is named from the
stages' reports (channels.py) and raised as StageFailure; `LLM.generate` then returns every
request as the engine does on a failure (GenerationError: the finished ones as they are, the
others with finish_reason "error"). Knows nothing of what a stage computes beyond StageRunner.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from pipedecode.distributed import wire
from pipedecode.distributed.channels import LinkLost, Links, Pending
from pipedecode.distributed.launch import mark_broken
from pipedecode.distributed.stage import StageRunner
from pipedecode.engine.scheduler import ScheduledBatch, Scheduler
from pipedecode.engine.sequence import Sequence
from pipedecode.engine.stats import StatsRecorder


@dataclass
class Flight:
    """A micro-batch in the pipeline and the receive of its tokens."""

    batch: ScheduledBatch
    tokens: Pending


def send_end(links: Links) -> None:
    """END to every stage: a generate call that runs nothing (its requests were refused)."""
    for k in range(1, links.world.world_size):
        links.send_control(k, wire.control_header(wire.OP_END))
    links.reap()


def drive(stage: StageRunner, links: Links, scheduler: Scheduler, seqs: list[Sequence],
          recorder: StatsRecorder, describe: Callable[[int], str]) -> None:
    """Run `seqs` (already added to `scheduler`) through the pipeline to the end."""
    world = links.world
    last = world.world_size - 1
    try:
        for k in range(1, world.world_size):
            links.send_control(k, wire.control_header(wire.OP_BEGIN))
        links.send_object(last, {s.seq_id: s.params for s in seqs})
        _loop(stage, links, scheduler, recorder)
        send_end(links)
    except LinkLost as lost:
        mark_broken()
        raise links.diagnose(lost, describe) from None
    except BaseException:
        mark_broken()
        raise


def _loop(stage: StageRunner, links: Links, scheduler: Scheduler,
          recorder: StatsRecorder) -> None:
    slots = scheduler.config.num_slots
    in_flight: deque[Flight] = deque()
    returned = time.perf_counter()
    while scheduler.has_unfinished():
        while len(in_flight) < slots:
            batch = scheduler.schedule()
            if batch is None:
                break
            in_flight.append(_issue(stage, links, batch))
        if not in_flight:
            raise RuntimeError(f"the scheduler formed no batch with {len(scheduler.waiting)} "
                               f"waiting and {len(scheduler.running)} running requests")
        flight = in_flight.popleft()
        tokens = links.wait(flight.tokens).tolist()
        finished = scheduler.postprocess(flight.batch, tokens)
        now = time.perf_counter()
        recorder.step(flight.batch.kind, flight.batch.num_tokens, now - returned, len(finished))
        returned = now
        links.reap(keep=2 * slots * links.world.world_size)


def _issue(stage: StageRunner, links: Links, batch: ScheduledBatch) -> Flight:
    """Send `batch` into the pipeline: metadata to every stage, stage 0 run, its output on."""
    world = links.world
    meta = stage.prepare(batch)
    header, payload = wire.encode(meta)
    for k in range(1, world.world_size):
        links.send_control(k, header, payload)
    tokens = links.recv_tokens(world.world_size - 1, meta.num_seqs,
                               f"the tokens of micro-batch {batch.batch_id}")
    links.send_hidden(1, stage.run(meta))
    return Flight(batch, tokens)
