"""Can two CUDA graphs, replayed side by side, wait on each other? CUDA events against flags.

The executor's "per_partition" graphs need edges both ways between two concurrently replayed
graphs. This probe replays a producer graph (a long sleep, then copies this step's value and
marks it) and a consumer graph (waits for the mark, copies the value), launching either one
first, and counts the steps whose consumer read a stale value:
- events: the producer records an external event (an event-record node), the consumer waits on
  it (an event-wait node);
- flags: `StreamFlags` (cuStreamWriteValue32 / cuStreamWaitValue32 memory-operation nodes).

Usage (GPU): python benchmarks/graph_sync_probe.py [--out DIR]
(writes graph_sync_probe_<gpu>.json and .md, by default under benchmarks/results)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record  # noqa: E402  (benchmarks/record.py)


def stale_steps(sync: str, producer_first: bool, steps: int = 20) -> int:
    from pipedecode.runtime.stream_flags import StreamFlags

    dev = torch.device("cuda")
    s_prod, s_cons = torch.cuda.Stream(), torch.cuda.Stream()
    value, shared, seen = (torch.zeros(1, device=dev) for _ in range(3))
    event = torch.cuda.Event(external=True)
    flags = StreamFlags({"ready": 1}, dev)
    producer, consumer = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(producer, stream=s_prod):
        torch.cuda._sleep(2_000_000)          # ~1 ms: the consumer is launched long before
        shared.copy_(value)
        if sync == "events":
            event.record(s_prod)
        else:
            flags.signal("ready", 0, s_prod)
    with torch.cuda.graph(consumer, stream=s_cons):
        if sync == "events":
            s_cons.wait_event(event)
        else:
            flags.wait("ready", 0, s_cons)
        seen.copy_(shared)
    torch.cuda.synchronize()
    order = [(producer, s_prod), (consumer, s_cons)]
    stale = 0
    for step in range(steps):
        value.fill_(float(step + 1))
        torch.cuda.synchronize()
        for graph, stream in order if producer_first else order[::-1]:
            with torch.cuda.stream(stream):
                graph.replay()
        torch.cuda.synchronize()
        stale += int(seen.item() != float(step + 1))
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=record.RESULTS)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("graph_sync_probe: needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = [{"sync": sync, "launched_first": "producer" if first else "consumer",
             "steps": args.steps, "stale": stale_steps(sync, first, args.steps)}
            for sync in ("events", "flags") for first in (True, False)]
    result = {**record.environment(), "rows": rows}
    lines = record.heading("Two graphs replayed side by side", result) + [
        f"Steps whose consumer graph read the previous step's value (of {args.steps}), by "
        f"cross-graph sync and which graph was launched first.", "",
        "| sync | launched first | stale steps |", "|---|---|---|"]
    lines += [f"| {r['sync']} | {r['launched_first']} | {r['stale']} |" for r in rows]
    record.publish(args.out, "graph_sync_probe", result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
