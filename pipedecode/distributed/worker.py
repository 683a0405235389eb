"""A stage after the first: its loop over the micro-batches of one generate call.

Owns `serve`: wait for the controller's BEGIN (or END: a call that runs nothing), take the
sampling params (the last stage), then per micro-batch receive the header and payload from
the controller and the residual stream from the previous stage, run the stage's layers, and
send the residual stream to the next stage or (the last) sample and send the tokens to the
controller, until END. The next micro-batch's header is received into a buffer posted before
the current one computes; on GPUs its residual stream is received while the current one
computes (channels.py). A failure is reported to the store (channels.py) and raised as
StageFailure. Knows nothing of scheduling.

`inject_fault` is the test hook that makes this process's stage raise, exit at once as if
killed, or stop answering for a while, after a number of micro-batches.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pipedecode.distributed import wire
from pipedecode.distributed.channels import Links, StageFailure
from pipedecode.distributed.stage import StageRunner
from pipedecode.distributed.launch import mark_broken

IDLE_TIMEOUT_S = 24 * 3600.0      # between generate calls: the controller's script decides


@dataclass(frozen=True)
class Fault:
    after_batches: int
    how: str          # "raise", "exit" or "hang"
    seconds: float    # "hang": for how long


_FAULT: dict[str, Fault | None] = {"fault": None}


def inject_fault(after_batches: int, how: str = "raise", seconds: float = 10.0) -> None:
    """Test hook: when this process's stage is about to run micro-batch `after_batches` + 1
    it raises (how="raise"), exits with status 17 without cleaning up (how="exit"), or
    sleeps `seconds` first (how="hang")."""
    if how not in ("raise", "exit", "hang") or after_batches < 0 or seconds < 0:
        raise ValueError(f"inject_fault(after_batches >= 0, how='raise'|'exit'|'hang', "
                         f"seconds >= 0), got {after_batches}, {how!r}, {seconds}")
    _FAULT["fault"] = Fault(after_batches, how, seconds)


def _check_fault(done: int) -> None:
    fault = _FAULT["fault"]
    if fault is None or done < fault.after_batches:
        return
    if fault.how == "exit":
        os._exit(17)
    if fault.how == "hang":
        _FAULT["fault"] = None
        time.sleep(fault.seconds)
        return
    raise RuntimeError(f"injected fault after {done} micro-batches")


def serve(stage: StageRunner, links: Links) -> int:
    """Serve one generate call of the controller; the micro-batches run."""
    rank = links.world.rank
    try:
        header = links.wait(links.recv_header(0), IDLE_TIMEOUT_S)
        op = int(header[0])
        if op == wire.OP_END:
            return 0
        if op != wire.OP_BEGIN:
            raise RuntimeError(f"stage {rank} expected BEGIN or END, got op {op}")
        if stage.spec.is_last:
            stage.begin(links.recv_object(0))
        return _micro_batches(stage, links)
    except Exception as exc:
        links.report(exc)
        mark_broken()
        raise StageFailure(rank, f"{stage.spec.describe()}: {exc}") from exc


def _micro_batches(stage: StageRunner, links: Links) -> int:
    spec, done = stage.spec, 0
    pending = links.recv_header(0)
    while True:
        header = links.wait(pending)
        if int(header[0]) == wire.OP_END:
            break
        meta = wire.decode(header.numpy(), links.recv_payload(0, int(header[6])))
        hidden = links.recv_hidden(spec.index - 1, meta.activation_rows)
        pending = links.recv_header(0)           # the next one's, before this one computes
        hidden = links.wait_hidden(hidden)
        _check_fault(done)
        out = stage.run(meta, hidden)
        if spec.is_last:
            links.send_tokens(0, stage.sample(meta, out))
        else:
            links.send_hidden(spec.index + 1, out)
        done += 1
        links.reap(keep=links.world.world_size)
    links.reap()
    return done
