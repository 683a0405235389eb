"""Cost model of one decode step: stage latencies on a partition, phases, step times, floor.

Owns how a decoder layer's three stages cost on n SMs, how two concurrent sides combine (the
co-run slowdown and the shared-HBM floor), and the sequential and interleaved step times.
Knows nothing of solvers or files, and counts nothing itself: what each stage runs (its GEMMs,
FLOPs and bytes) comes from `pipedecode.counts`, the latency of each op from
`pipedecode.profiles.latency`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipedecode import counts
from pipedecode.models import ModelShape
from pipedecode.profiles.latency import (attention_latency_us, bandwidth_bytes_per_s,
                                         corun_us, gemm_latency_us)
from pipedecode.profiles.schema import DeviceProfile


@dataclass(frozen=True)
class CostModel:
    """Stage costs of `model` on `profile`; every method is a pure function of its arguments."""

    model: ModelShape
    profile: DeviceProfile

    # ---- bytes and FLOPs (counted in `pipedecode.counts`, per layer) ---------------------
    def linear_bytes(self, tokens: float) -> float:
        """Bytes pre_attn + post_attn move: weights once, activations per token."""
        return (counts.pre_attn(self.model, tokens).counts()
                + counts.post_attn(self.model, tokens).counts()).bytes_moved

    def attention_bytes(self, tokens: float, kv_tokens: float) -> float:
        return counts.attention_stage(self.model, tokens, kv_tokens).counts().bytes_moved

    def flops(self, tokens: float, kv_tokens: float) -> float:
        return counts.layer(self.model, tokens, kv_tokens).flops

    # ---- latencies on a partition of sm_count SMs ---------------------------------------
    def _elementwise_us(self, bytes_moved: float, kernels: int, sm_count: float) -> float:
        bw = bandwidth_bytes_per_s(self.profile, sm_count)
        return bytes_moved / bw * 1e6 + kernels * self.profile.launch_overhead_us

    def _stage_us(self, work: counts.StageWork, sm_count: float) -> float:
        """The stage's GEMMs (`gemm_latency_us`) and its other kernels at the partition's
        bandwidth, each paying one launch."""
        gemms = sum(gemm_latency_us(self.profile, work.tokens, s.n, s.k, sm_count)
                    for s in work.gemms)
        return gemms + self._elementwise_us(work.elementwise_bytes, work.elementwise_kernels,
                                            sm_count)

    def pre_attn_us(self, tokens: float, sm_count: float) -> float:
        return self._stage_us(counts.pre_attn(self.model, tokens), sm_count)

    def post_attn_us(self, tokens: float, sm_count: float) -> float:
        return self._stage_us(counts.post_attn(self.model, tokens), sm_count)

    def linear_us(self, tokens: float, sm_count: float) -> float:
        """post_attn then pre_attn of one micro-batch: the compute side of a phase."""
        return self.pre_attn_us(tokens, sm_count) + self.post_attn_us(tokens, sm_count)

    def attention_us(self, tokens: float, kv_tokens: float, sm_count: float) -> float:
        """KV write + decode attention of `tokens` sequences holding `kv_tokens` in total."""
        if tokens <= 0:
            return 0.0
        m = self.model
        return self._stage_us(counts.attention_stage(m, tokens, kv_tokens), sm_count) \
            + attention_latency_us(self.profile, tokens, kv_tokens / tokens, m.num_heads,
                                   m.num_kv_heads, m.head_dim, sm_count)

    def head_us(self, tokens: float) -> float:
        """Final norm and LM head on all SMs (the same in every mode)."""
        sms, m = self.profile.sm_count, self.model
        norm = self._elementwise_us(counts.head_norm_bytes(m, tokens), 1, sms)
        return norm + gemm_latency_us(self.profile, tokens, m.vocab_size, m.hidden_size, sms)

    # ---- phases and steps -------------------------------------------------------------
    def phase_us(self, memory_us: float, compute_us: float, bytes_moved: float,
                 memory_sms: int) -> float:
        """Two sides running at once (`corun_us`: the measured penalty of overlapped work at this
        split), floored by both sides' bytes over the shared HBM bandwidth."""
        floor = bytes_moved / self.profile.hbm_bytes_per_s * 1e6
        return max(corun_us(self.profile, memory_sms, memory_us, compute_us), floor)

    def sequential_layer_us(self, tokens: float, kv_tokens: float) -> float:
        sms = self.profile.sm_count
        return (self.pre_attn_us(tokens, sms) + self.attention_us(tokens, kv_tokens, sms)
                + self.post_attn_us(tokens, sms))

    def sequential_step_us(self, tokens: float, kv_tokens: float) -> float:
        """The whole batch as one, each stage on all SMs, layer after layer, then the head."""
        return self.model.num_layers * self.sequential_layer_us(tokens, kv_tokens) \
            + self.head_us(tokens)

    def interleaved_phases_us(self, sizes: list[tuple[int, int]], memory_sms: int) -> list[float]:
        """Phase j: attention of micro-batch j beside post/pre_attn of micro-batch (j+1) % n.

        `sizes` is [(tokens, kv_tokens)] per micro-batch.
        """
        compute_sms = self.profile.sm_count - memory_sms
        phases = []
        for j, (tokens, kv_tokens) in enumerate(sizes):
            prev_tokens = sizes[(j + 1) % len(sizes)][0]
            mem = self.attention_us(tokens, kv_tokens, memory_sms)
            comp = self.linear_us(prev_tokens, compute_sms)
            moved = self.attention_bytes(tokens, kv_tokens) + self.linear_bytes(prev_tokens)
            phases.append(self.phase_us(mem, comp, moved, memory_sms))
        return phases

    def fill_drain_us(self, sizes: list[tuple[int, int]]) -> float:
        """Prologue (pre_attn of layer 0 of micro-batch 0) and epilogue (the last layer's
        post_attn of micro-batches 1..n-1), on all SMs."""
        sms = self.profile.sm_count
        return self.pre_attn_us(sizes[0][0], sms) \
            + sum(self.post_attn_us(t, sms) for t, _ in sizes[1:])

    def interleaved_step_us(self, sizes: list[tuple[int, int]], memory_sms: int) -> float:
        layers = self.model.num_layers * sum(self.interleaved_phases_us(sizes, memory_sms))
        tokens = sum(t for t, _ in sizes)
        return layers + self.fill_drain_us(sizes) + self.head_us(tokens)

    def prefill_us(self, prompt_lens: list[int]) -> float:
        """Prefill of prompts as one ragged batch on all SMs: GEMMs over every prompt token plus
        causal attention (roofline of its FLOPs and KV bytes), then the head for the last tokens."""
        if not prompt_lens:
            return 0.0
        m, p, sms = self.model, self.profile, self.profile.sm_count
        attn_us = self.floor_us(counts.prefill_attention(m, prompt_lens))
        layer = self.linear_us(sum(prompt_lens), sms) + attn_us + p.launch_overhead_us
        return m.num_layers * layer + self.head_us(len(prompt_lens))

    def floor_us(self, work: counts.Counts) -> float:
        """max(FLOPs / peak, bytes / bandwidth) of `work` on the whole chip."""
        p = self.profile
        return max(work.flops / p.peak_flops_per_s, work.bytes_moved / p.hbm_bytes_per_s) * 1e6

    def roofline_floor_us(self, tokens: float, kv_tokens: float) -> float:
        """The floor of the whole step (`counts.step`: weights read once)."""
        return self.floor_us(counts.step(self.model, tokens, kv_tokens))
