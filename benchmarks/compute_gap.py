"""Why did the compute side of two micro-batches cost more in decode_step.py's breakdown than in
a few profiled layers? The same compute stages timed as one CUDA graph while one factor changes
at a time: layer count, KV-cache length, how the graph is captured, what ran before. (Answer:
the data. A fresh step's activations are zeros and GEMMs on zeros run faster; the breakdown
timed one batch on zeros and two micro-batches on real values. It now runs a whole step first.)
Prints a table; writes compute_gap.json.

    python benchmarks/compute_gap.py --out OUT [--batch 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_step import time_us  # noqa: E402

REPEATS = 3


def graph_us(fn, repeats: int) -> float:
    """Microseconds per call of fn captured once in a CUDA graph and replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()                                      # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_us(graph.replay, repeats, 1)


def compute_us(weights, batch: int, context: int, micro_batches: int) -> float:
    from pipedecode.runtime.step import DecodeStep

    step = DecodeStep(weights, batch, context + 16)
    step.set_inputs(torch.randint(0, weights.shape.vocab_size, (batch,), device="cuda"),
                    torch.full((batch,), context, dtype=torch.int32, device="cuda"))
    size = batch // micro_batches
    parts = [slice(i * size, (i + 1) * size) for i in range(micro_batches)]
    layers = len(weights.layers)

    def compute():
        for layer in range(layers):
            for rows in parts:
                step.pre_attn(layer, rows)
                step.post_attn(layer, rows)

    us = graph_us(compute, REPEATS) / layers
    del step
    torch.cuda.empty_cache()
    return us


def capture_variants(weights, batch: int, context: int) -> list[dict]:
    """Two micro-batches on one step, captured and timed four ways."""
    from decode_step import _graph_of, time_us

    from pipedecode.runtime.partition_streams import open_partition_streams
    from pipedecode.runtime.step import DecodeStep

    step = DecodeStep(weights, batch, context + 16)
    step.set_inputs(torch.randint(0, weights.shape.vocab_size, (batch,), device="cuda"),
                    torch.full((batch,), context, dtype=torch.int32, device="cuda"))
    layers = len(weights.layers)

    def compute(parts):
        return lambda: [(step.pre_attn(l, r), step.post_attn(l, r))
                        for l in range(layers) for r in parts]

    halves = [slice(0, batch // 2), slice(batch // 2, batch)]
    out = []

    def row(name, us):
        out.append({"layers": layers, "context": context, "via": name,
                    "two_micro_batches_us": us / layers})

    row("graph_us (side-stream warm-up)", graph_us(compute(halves), REPEATS))
    row("_graph_of + time_us (decode_step)", time_us(_graph_of(compute(halves)).replay, 2, 3))
    whole = _graph_of(compute([slice(0, batch)]))          # a 1-batch graph captured first
    row("_graph_of after a 1-batch graph", time_us(_graph_of(compute(halves)).replay, 2, 3))
    del whole
    open_partition_streams(32, torch.cuda.get_device_properties(0).multi_processor_count - 32,
                           torch.device("cuda"))
    row("_graph_of after partition streams", time_us(_graph_of(compute(halves)).replay, 2, 3))
    for cache in step.k_cache + step.v_cache:      # the breakdown fills the caches
        cache.normal_()
    row("_graph_of after random caches", time_us(_graph_of(compute(halves)).replay, 2, 3))
    attention = _graph_of(lambda: [step.attention(l, slice(0, batch)) for l in range(layers)])
    time_us(attention.replay, 2, 3)
    row("_graph_of after an attention graph ran", time_us(_graph_of(compute(halves)).replay,
                                                          2, 3))
    row("one batch (not two), after an attention graph ran",
        time_us(_graph_of(compute([slice(0, batch)])).replay, 2, 3))
    step.attn.zero_()                               # the attention's output back to zeros
    row("_graph_of with the attention output zeroed again",
        time_us(_graph_of(compute(halves)).replay, 2, 3))
    del step, attention
    torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args(argv)
    from pipedecode.models import model_shape
    from pipedecode.runtime.weights import random_weights

    shape = model_shape("llama-3-8b")
    rows = []
    for layers in (4, 32):
        weights = random_weights(shape, max_positions=512, device="cuda", num_layers=layers)
        for context in (32, 256):
            one, two = (compute_us(weights, args.batch, context, n) for n in (1, 2))
            rows.append({"layers": layers, "context": context, "one_batch_us": one,
                         "two_micro_batches_us": two, "ratio": two / one})
            print(rows[-1], flush=True)
        if layers == 32:
            rows += capture_variants(weights, args.batch, 256)
            for r in rows[-8:]:
                print(r, flush=True)
        if layers == 32:     # the breakdown's own code path, same process, same weights
            from decode_step import stage_breakdown

            bd = stage_breakdown(weights, [256] * args.batch, 32)
            rows.append({"layers": layers, "context": 256, "via": "decode_step.stage_breakdown",
                         "one_batch_us": bd["compute_whole_us"] / layers,
                         "two_micro_batches_us": bd["compute_2mb_whole_us"] / layers,
                         "ratio": bd["compute_2mb_whole_us"] / bd["compute_whole_us"]})
            print(rows[-1], flush=True)
        del weights
        torch.cuda.empty_cache()
    with open(os.path.join(args.out, "compute_gap.json"), "w") as fh:
        json.dump({"gpu": torch.cuda.get_device_name(), "batch": args.batch, "rows": rows}, fh,
                  indent=1)
    print("| layers | context | 1 batch µs/layer | 2 micro-batches µs/layer | ratio |")
    for r in rows:
        print(f"| {r['layers']} {r.get('via', '')} | {r['context']} | "
              f"{r.get('one_batch_us', float('nan')):.1f} | "
              f"{r['two_micro_batches_us']:.1f} | {r.get('ratio', float('nan')):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
