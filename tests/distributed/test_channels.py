"""Naming a lost stage: the reports stages leave in the store are followed from the peer the
controller lost to the root (its own error, a process that is gone, or silence), and process
liveness tells a zombie from a live process."""

import os
import socket
import subprocess
import time

import pytest
import torch
import torch.distributed as dist

from pipedecode.distributed import channels
from pipedecode.distributed.channels import LinkLost, Links, process_alive
from pipedecode.distributed.launch import PipelineWorld

HOST = socket.gethostname()


def _gone_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _links(store, rank: int, processes) -> Links:
    world = PipelineWorld(rank, len(processes), torch.device("cpu"), "gloo", None, None, store,
                          tuple(processes))
    return Links(world, "test/pipeline", 1.0, 8)


def _describe(stage: int) -> str:
    return f"stage {stage} (layers {stage}-{stage})"


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(channels, "REPORT_GRACE_S", 0.2)


def test_the_chain_of_lost_peers_leads_to_the_stage_that_is_gone(quick):
    store = dist.HashStore()
    alive = (HOST, os.getpid())
    processes = [alive, (HOST, _gone_pid()), alive, alive]
    _links(store, 3, processes).report(LinkLost(2, "the residual stream", "closed", False))
    _links(store, 2, processes).report(LinkLost(1, "the residual stream", "closed", False))
    failure = _links(store, 0, processes).diagnose(
        LinkLost(3, "the tokens of micro-batch 9", "Connection closed by peer", False),
        _describe)
    assert failure.stage == 1
    assert str(failure) == ("stage 1 (layers 1-1) exited (its process is gone); lost while "
                            "waiting for the tokens of micro-batch 9")


def test_a_stage_that_reported_its_own_error_is_named_with_it(quick):
    store = dist.HashStore()
    processes = [(HOST, os.getpid())] * 3
    _links(store, 2, processes).report(LinkLost(1, "the residual stream", "closed", False))
    _links(store, 1, processes).report(RuntimeError("CUDA error: out of memory"))
    failure = _links(store, 0, processes).diagnose(LinkLost(2, "tokens", "closed", False),
                                                   _describe)
    assert failure.stage == 1
    assert "stage 1 (layers 1-1) failed: RuntimeError: CUDA error: out of memory" in str(failure)


def test_silence_is_a_timeout_or_a_closed_link(quick):
    store = dist.HashStore()
    processes = [(HOST, os.getpid())] * 2
    links = _links(store, 0, processes)
    timed_out = links.diagnose(LinkLost(1, "tokens", "Timed out waiting 1000ms", True),
                               _describe)
    assert "stage 1 (layers 1-1) did not answer within 1 s" in str(timed_out)
    closed = links.diagnose(LinkLost(1, "tokens", "Connection reset", False), _describe)
    assert "stage 1 (layers 1-1) stopped answering (Connection reset)" in str(closed)


def test_process_liveness():
    assert process_alive(HOST, os.getpid()) is True
    assert process_alive(HOST, _gone_pid()) is False
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while process_alive(HOST, zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process_alive(HOST, zombie.pid) is False      # exited, not reaped yet
    zombie.wait()
    assert process_alive(HOST + "-elsewhere", 1) is None
