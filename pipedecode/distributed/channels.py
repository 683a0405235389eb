"""The point-to-point links of a pipeline, bounded waits on them, and naming a lost stage.

Owns `Links`: posting the sends and receives of wire.py's arrays on torch.distributed
(headers, payloads, sampling params and tokens on the gloo control group, CPU tensors the
hosts read; the residual stream on the data group, NCCL between GPUs), each kind under its
own tag so that messages of one kind from one peer match in the order they were sent. Every
host-side wait is `work.wait(timeout=...)`: a timeout or a connection the peer closed (gloo
notices a dead process at once) becomes `LinkLost` naming the peer. On GPUs a residual stream
is received on a stream of its own into memory allocated there, and the compute stream waits
for it (`work.wait()`), so the transfer overlaps the step before; the process group's timeout
bounds it.

A stage that fails leaves a report in the default group's store (its own error, or the peer
it lost) before it exits; `diagnose` follows the reports from the peer the controller lost to
the stage at the root (one that reported its own error, one whose process is gone, or one
that stopped answering) and names it. Knows nothing of models or scheduling.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipedecode.errors import PipedecodeError
from pipedecode.distributed.launch import PipelineWorld
from pipedecode.distributed.wire import HEADER_INTS

TAG_HEADER, TAG_PAYLOAD, TAG_TOKENS, TAG_HIDDEN = 1, 2, 3, 4
REPORT_GRACE_S = 2.0        # how long the controller waits for the stages' reports


class LinkLost(Exception):
    """A wait on `peer` failed: it timed out, or the peer closed the connection."""

    def __init__(self, peer: int, what: str, cause: str, timed_out: bool) -> None:
        super().__init__(f"{what} from rank {peer}: {cause}")
        self.peer, self.what, self.cause, self.timed_out = peer, what, cause, timed_out


class StageFailure(PipedecodeError):
    """A pipeline stage failed or was lost; `stage` is its index."""

    def __init__(self, stage: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class Pending:
    """A posted receive: its buffer and work, from whom and what it is."""

    buffer: torch.Tensor
    work: Any
    peer: int
    what: str


class Links:
    """This rank's links (module docstring); `key` names this pipeline's store entries."""

    def __init__(self, world: PipelineWorld, key: str, timeout_s: float, hidden_size: int):
        self.world, self.key, self.timeout_s, self.hidden_size = world, key, timeout_s, hidden_size
        cuda = world.device.type == "cuda"
        self.recv_stream = torch.cuda.Stream(world.device) if cuda else None
        self.sends: list[tuple[Any, Any, int]] = []     # (work, tensor, peer), until done

    # ---- control: gloo, CPU int32 -------------------------------------------------------
    def send_control(self, dst: int, header: np.ndarray, payload: np.ndarray | None = None):
        self._send(torch.from_numpy(header), dst, TAG_HEADER, self.world.control)
        if payload is not None:
            self._send(torch.from_numpy(payload), dst, TAG_PAYLOAD, self.world.control)

    def recv_header(self, src: int = 0) -> Pending:
        return self._recv(torch.empty(HEADER_INTS, dtype=torch.int32), src, TAG_HEADER,
                          "a header", self.world.control)

    def recv_payload(self, src: int, length: int) -> np.ndarray:
        pending = self._recv(torch.empty(length, dtype=torch.int32), src, TAG_PAYLOAD,
                             "a payload", self.world.control)
        return self.wait(pending).numpy()

    def send_tokens(self, dst: int, tokens: list[int]) -> None:
        self._send(torch.tensor(tokens, dtype=torch.int32), dst, TAG_TOKENS, self.world.control)

    def recv_tokens(self, src: int, count: int, what: str) -> Pending:
        return self._recv(torch.empty(count, dtype=torch.int32), src, TAG_TOKENS, what,
                          self.world.control)

    def send_object(self, dst: int, obj: Any) -> None:
        with _lost_as(dst, "the sampling params"):
            dist.send_object_list([obj], dst=dst, group=self.world.control)

    def recv_object(self, src: int) -> Any:
        out = [None]
        with _lost_as(src, "the sampling params"):
            dist.recv_object_list(out, src=src, group=self.world.control)
        return out[0]

    # ---- data: the residual stream --------------------------------------------------------
    def send_hidden(self, dst: int, hidden: torch.Tensor) -> None:
        if self.recv_stream is None:
            self._send(hidden, dst, TAG_HIDDEN, self.world.data)
        else:       # NCCL after the compute stream's work; it keeps `hidden` until sent
            with _lost_as(dst, "a send"):
                dist.isend(hidden, dst=dst, group=self.world.data, tag=TAG_HIDDEN)

    def recv_hidden(self, src: int, rows: int) -> Pending:
        dev = self.world.device
        if self.recv_stream is None:
            return self._recv(torch.empty(rows, self.hidden_size), src, TAG_HIDDEN,
                              "the residual stream", self.world.data)
        with torch.cuda.stream(self.recv_stream):
            buffer = torch.empty(rows, self.hidden_size, device=dev)
            pending = self._recv(buffer, src, TAG_HIDDEN, "the residual stream",
                                 self.world.data)
        buffer.record_stream(torch.cuda.current_stream(dev))
        return pending

    def wait_hidden(self, pending: Pending) -> torch.Tensor:
        if self.recv_stream is None:
            return self.wait(pending)
        pending.work.wait()             # the compute stream waits; the host runs on
        return pending.buffer

    # ---- waits ------------------------------------------------------------------------------
    def _send(self, tensor: torch.Tensor, dst: int, tag: int, group) -> None:
        with _lost_as(dst, "a send"):
            self.sends.append((dist.isend(tensor, dst=dst, group=group, tag=tag), tensor, dst))

    def _recv(self, buffer: torch.Tensor, src: int, tag: int, what: str, group) -> Pending:
        with _lost_as(src, what):
            work = dist.irecv(buffer, src=src, group=group, tag=tag)
        return Pending(buffer, work, src, what)

    def wait(self, pending: Pending, timeout_s: float | None = None) -> torch.Tensor:
        _wait(pending.work, pending.peer, pending.what, timeout_s or self.timeout_s)
        return pending.buffer

    def reap(self, keep: int = 0) -> None:
        """Wait for every gloo send but the `keep` latest (their tensors are kept until
        then)."""
        while len(self.sends) > keep:
            work, _, peer = self.sends.pop(0)
            _wait(work, peer, "a send", self.timeout_s)

    # ---- failures ---------------------------------------------------------------------------
    def report(self, exc: BaseException) -> None:
        """Leave this stage's failure in the store: the peer it lost, or its own error."""
        if isinstance(exc, LinkLost):
            entry = {"kind": "lost", "peer": exc.peer, "detail": str(exc)}
        else:
            entry = {"kind": "error", "peer": None, "detail": f"{type(exc).__name__}: {exc}"}
        try:
            self.world.store.set(f"{self.key}/report/{self.world.rank}", json.dumps(entry))
        except Exception:  # noqa: BLE001 - the store may be gone with the controller
            pass

    def diagnose(self, lost: LinkLost, describe) -> StageFailure:
        """The stage to blame once the controller lost `lost.peer`: waits up to
        REPORT_GRACE_S for the stages' reports. describe(stage) -> "stage k (layers a-b)"."""
        deadline = time.monotonic() + REPORT_GRACE_S
        while True:
            stage, how, detail = self._root(lost.peer)
            if how in ("error", "exited") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if how == "error":
            message = f"{describe(stage)} failed: {detail}"
        elif how == "exited":
            message = f"{describe(stage)} exited (its process is gone)"
        elif lost.timed_out and stage == lost.peer:
            message = f"{describe(stage)} did not answer within {self.timeout_s:g} s"
        else:
            message = f"{describe(stage)} stopped answering ({lost.cause})"
        return StageFailure(stage, f"{message}; lost while waiting for {lost.what}")

    def _root(self, stage: int) -> tuple[int, str, str | None]:
        seen = set()
        while stage not in seen:
            seen.add(stage)
            entry = self._report_of(stage)
            if entry is not None and entry["kind"] == "error":
                return stage, "error", entry["detail"]
            if entry is None or entry["peer"] in (None, 0):
                break
            stage = int(entry["peer"])
        alive = process_alive(*self.world.processes[stage])
        return stage, "exited" if alive is False else "silent", None

    def _report_of(self, stage: int) -> dict | None:
        name = f"{self.key}/report/{stage}"
        if not self.world.store.check([name]):
            return None
        return json.loads(self.world.store.get(name))


@contextlib.contextmanager
def _lost_as(peer: int, what: str):
    """torch.distributed's errors on a link to `peer` (a timeout, a closed pair: gloo raises
    RuntimeError for every one) as LinkLost."""
    try:
        yield
    except LinkLost:
        raise
    except RuntimeError as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LinkLost(peer, what, cause, "timed out" in cause.lower()) from exc


def _wait(work, peer: int, what: str, timeout_s: float) -> None:
    with _lost_as(peer, what):
        work.wait(timeout=datetime.timedelta(seconds=timeout_s))


def process_alive(host: str, pid: int) -> bool | None:
    """Whether process `pid` of `host` runs (None: on another host, unknown). A zombie (exited,
    not yet reaped) counts as gone."""
    if host != socket.gethostname():
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
