"""Helpers of the pipeline tests: a world of processes spawned as torchrun would start them.

`run_world(size, fn, *args)` starts `size` processes (multiprocessing's spawn, as torchrun's
workers are fresh interpreters) with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), one CPU thread each, runs `fn(rank, size, *args)`
in each and returns what each returned (None for a process that died) and the exit codes.
A hard deadline: processes still running at `timeout_s` are killed and the test fails.
A port taken by another process between choosing and binding it is chosen again.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import socket
import time
import traceback

DEFAULT_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, size: int, port: int, results, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    try:
        results.put((rank, "ok", fn(rank, size, *args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put((rank, "raised", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


PORT_TAKEN = ("EADDRINUSE", "Address already in use")


def run_world(size: int, fn, *args, timeout_s: float = DEFAULT_TIMEOUT_S, tries: int = 3):
    """({rank: ("ok", value) or ("raised", text)}, [exit code per rank]). A port another
    process took between choosing and binding it is chosen again (`tries` times)."""
    for _ in range(tries - 1):
        found = _run_world(size, fn, args, timeout_s)
        if found is not None:
            return found
    return _run_world(size, fn, args, timeout_s, last=True)


def _run_world(size: int, fn, args, timeout_s: float, last: bool = False):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, size, port, results, fn, args), daemon=True)
             for r in range(size)]
    for p in procs:
        p.start()
    deadline, out = time.monotonic() + timeout_s, {}
    while len(out) < size and time.monotonic() < deadline:
        try:
            rank, status, value = results.get(timeout=0.5)
            out[rank] = (status, value)
        except queue.Empty:
            if all(not p.is_alive() for p in procs):
                break
        if not last and any(s == "raised" and any(t in v for t in PORT_TAKEN)
                            for s, v in out.values()):
            for p in procs:
                p.kill()
                p.join()
            return None
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    if hung:
        raise AssertionError(f"ranks {hung} were still running after {timeout_s:g} s: hung "
                             f"(results so far: {sorted(out)})")
    return out, [p.exitcode for p in procs]
