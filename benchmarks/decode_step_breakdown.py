"""Why interleaving wins or loses at a point: the decode step taken apart (GPU diagnostics).

Owns `stage_breakdown` (compute-only and attention-only parts of the step, whole GPU against each
partition, and the two partitions at once) and `with_kv_eviction` (the kernel set with its
attention loading K/V under an L2 eviction policy). Times with `runtime.timing`. Needs a GPU.
"""

from __future__ import annotations

import dataclasses

import torch

from decode_step_points import SLACK
from pipedecode.runtime.timing import capture, replay_together, time_us


def with_kv_eviction(kernels, policy: str):
    """The kernel set with its decode attention loading K/V under an L2 eviction policy
    (diagnostic: does streaming the KV cache evict the weight tiles the GEMMs beside it reuse?)."""
    from pipedecode.runtime import kernels as kmod
    from pipedecode.runtime.kernels._attention import AttentionConfig

    cfg = AttentionConfig(kv_eviction=policy)

    def attention(q, k_cache, v_cache, context_lens, *, out, sm_count=None, scale=None,
                  context_starts=None, lane=None):
        if lane is not None and lane.coresident:
            raise ValueError("the KV-eviction diagnostic runs the Triton attention, which does "
                             "not co-reside; leave co-resident runs out (--coresident-kib '')")
        return kmod.decode_attention(q, k_cache, v_cache, context_lens, out=out,
                                     sm_count=sm_count, scale=scale, config=cfg,
                                     context_starts=context_starts)

    return dataclasses.replace(kernels, name=f"{kernels.name}+{policy}",
                               decode_attention=attention)


def _step(weights, lens, kernels: str, kv_eviction: str):
    """A DecodeStep of the point with random KV and inputs, one whole step run: every
    activation buffer then holds real values (GEMMs on a fresh step's zeros run faster)."""
    from pipedecode.runtime.step import DecodeStep

    batch = len(lens)
    step = DecodeStep(weights, batch, max(lens) + SLACK)
    if kernels != "auto":
        from pipedecode.runtime.ops import kernel_set

        step.kernels = kernel_set(kernels, "cuda")
    if kv_eviction:
        step.kernels = with_kv_eviction(step.kernels, kv_eviction)
    for cache in step.k_cache + step.v_cache:
        cache.normal_()
    step.set_inputs(torch.randint(0, weights.shape.vocab_size, (batch,), device="cuda"),
                    torch.tensor(lens, dtype=torch.int32, device="cuda"))
    step.run_sequential()
    return step


def stage_breakdown(weights, lens, memory_sms: int, kernels: str = "auto",
                    kv_eviction: str = "") -> dict:
    """Compute-only and attention-only parts of the step, whole GPU (full batch) vs each
    partition (two micro-batches), and the two partitions at once, in microseconds."""
    from pipedecode.runtime.partition_streams import open_partition_streams

    step = _step(weights, lens, kernels, kv_eviction)
    batch = len(lens)
    total = torch.cuda.get_device_properties(0).multi_processor_count
    streams = open_partition_streams(memory_sms, total - memory_sms, torch.device("cuda"))
    halves = [slice(0, batch // 2), slice(batch // 2, batch)]

    def compute(rows_list, sms):
        return lambda: [(step.pre_attn(l, r, sms), step.post_attn(l, r, sms))
                        for l in range(step.num_layers) for r in rows_list]

    def attention(rows_list, sms):
        return lambda: [step.attention(l, r, sms) for l in range(step.num_layers)
                        for r in rows_list]

    def graph_us(fn, stream=None):
        return time_us(capture(fn, stream).replay, iters=2, repeats=3)

    whole = slice(0, batch)
    out = {"memory_sms": streams.memory_sms, "compute_sms": streams.compute_sms,
           "kernels": step.kernels.name,
           "compute_whole_us": graph_us(compute([whole], None)),
           "attention_whole_us": graph_us(attention([whole], None)),
           "compute_2mb_whole_us": graph_us(compute(halves, None))}
    g_c = capture(compute(halves, streams.compute_sms), streams.compute_stream)
    g_a = capture(attention(halves, streams.memory_sms), streams.memory_stream)
    out["compute_partition_us"] = time_us(g_c.replay, iters=2, repeats=3)
    out["attention_partition_us"] = time_us(g_a.replay, iters=2, repeats=3)
    both = [(g_c, streams.compute_stream), (g_a, streams.memory_stream)]
    out["both_partitions_concurrent_us"] = time_us(lambda: replay_together(both), iters=2,
                                                   repeats=3)
    return out
