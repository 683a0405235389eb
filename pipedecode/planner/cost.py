"""Cost model of one decode step: stage latencies on a partition, phases, step times, floors.

Owns how a decoder layer's three stages cost on n SMs, how two concurrent sides combine (the
co-run slowdown and the shared-HBM floor), the sequential, interleaved and co-resident step
times, the floors (the step's and the sum over its ops) and the fewest tokens a micro-batch of an
overlapped step may hold. Co-resident phases (both sides on every SM, two plain streams): each
side at its co-resident speed (the whole-GPU stage time times the measured factor of co-resident
mode's kernels), combined by the measured interference (`latency.coresident_penalty`: max +
penalty x min), floored by both sides' bytes over the shared HBM bandwidth. Knows nothing of
solvers or files, and counts nothing itself: what each stage runs (its GEMMs, FLOPs and bytes)
comes from `pipedecode.counts`, the latency of each op and the samples' interference from
`pipedecode.profiles.latency`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipedecode import counts
from pipedecode.models import ModelShape
from pipedecode.profiles.latency import (attention_latency_us, bandwidth_bytes_per_s,
                                         coresident_penalty, corun_us, gemm_latency_us,
                                         piecewise)
from pipedecode.profiles.schema import DeviceProfile


def min_micro_batch_tokens(profile: DeviceProfile, dtype_bytes: int = 2) -> int:
    """The fewest tokens a micro-batch of an overlapped step may hold: twice the ridge point in
    tokens, ceil(2 x peak FLOP/s / (HBM bytes/s x bytes per weight element)).

    157 on the shipped H200 profile (2 x 690 TFLOP/s / (4.40 TB/s x 2 bytes)), 230 on the
    H100's (709 TFLOP/s, 3.09 TB/s); the analytic ones: 180 and 260. A GEMM of T tokens does 2T
    FLOPs per weight element it reads, so for bf16 weights this is where a micro-batch's GEMMs
    reach the ridge: below it each micro-batch's own pass over the weights is memory-bound, and
    that second pass costs more than overlapping wins."""
    return math.ceil(2 * profile.ridge_flops_per_byte / dtype_bytes)


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
        return [self.phase_us(self.attention_us(tokens, kv_tokens, memory_sms),
                              self.linear_us(other, compute_sms), moved, memory_sms)
                for tokens, kv_tokens, other, moved in self._phase_pairs(sizes)]

    def _phase_pairs(self, sizes: list[tuple[int, int]]):
        """Per phase j: (tokens, kv_tokens) of micro-batch j, whose attention runs, the tokens
        of micro-batch (j + 1) % n, whose post/pre_attn runs beside it, and their HBM bytes."""
        for j, (tokens, kv_tokens) in enumerate(sizes):
            other = sizes[(j + 1) % len(sizes)][0]
            yield (tokens, kv_tokens, other,
                   self.attention_bytes(tokens, kv_tokens) + self.linear_bytes(other))

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

    def op_floor_us(self, tokens: float, kv_tokens: float) -> float:
        """The sequential step's own floor: the sum over its ops of max(FLOPs / peak, bytes /
        HBM bandwidth): every GEMM, the attention and the elementwise kernels of each layer, the
        final norm and the LM head's GEMM."""
        m = self.model
        layer = 0.0
        for work in (counts.pre_attn(m, tokens), counts.attention_stage(m, tokens, kv_tokens),
                     counts.post_attn(m, tokens)):
            layer += sum(self.floor_us(counts.gemm(tokens, g.n, g.k, work.dtype_bytes))
                         for g in work.gemms)
            layer += self.floor_us(work.attention) + \
                self.floor_us(counts.Counts(0, work.elementwise_bytes))
        head = self.floor_us(counts.gemm(tokens, m.vocab_size, m.hidden_size, m.dtype_bytes)) + \
            self.floor_us(counts.Counts(0, counts.head_norm_bytes(m, tokens)))
        return m.num_layers * layer + head

    # ---- co-resident mode: both sides on every SM -----------------------------------------
    def coresident_factors(self, smem_bytes: int, tokens: float) -> tuple[float, float]:
        """(attention, compute) time of co-resident mode's kernels over this model's whole-GPU
        stage times, piecewise-linear in the micro-batch's tokens among the samples of this
        attention budget. A sample of this model divides its alone times by this model's
        prediction at its sizes (so a measured phase is priced exactly); one of another model
        by its own sequential times. KeyError where the profile has no such samples."""
        sms = self.profile.sm_count
        att, comp = [], []
        for s in self.profile.coresident_samples:
            if s.attention_smem_bytes != smem_bytes:
                continue
            if s.model == self.model.name:
                a_ref = self.attention_us(s.tokens, s.tokens * s.context_len, sms)
                c_ref = self.linear_us(s.tokens, sms)
            else:
                a_ref, c_ref = s.attention_sequential_us, s.compute_sequential_us
            att.append((s.tokens, s.attention_alone_us / a_ref))
            comp.append((s.tokens, s.compute_alone_us / c_ref))
        if not att:
            raise KeyError(f"{self.profile.name} has no co-resident samples at {smem_bytes} "
                           f"bytes")
        return piecewise(att, tokens), piecewise(comp, tokens)

    def coresident_attention_us(self, tokens: float, kv_tokens: float, smem_bytes: int) -> float:
        """The attention stage of `tokens` requests at co-resident speed, on every SM."""
        factor = self.coresident_factors(smem_bytes, tokens)[0]
        return self.attention_us(tokens, kv_tokens, self.profile.sm_count) * factor

    def coresident_linear_us(self, tokens: float, smem_bytes: int) -> float:
        """post_attn then pre_attn of `tokens` rows at co-resident speed, on every SM."""
        factor = self.coresident_factors(smem_bytes, tokens)[1]
        return self.linear_us(tokens, self.profile.sm_count) * factor

    def coresident_phase_us(self, memory_us: float, compute_us: float, bytes_moved: float,
                            smem_bytes: int, tokens: float) -> float:
        """Both sides at once on every SM: max + the measured penalty x min, floored by both
        sides' bytes over the shared HBM bandwidth."""
        penalty = coresident_penalty(self.profile, smem_bytes, tokens)
        floor = bytes_moved / self.profile.hbm_bytes_per_s * 1e6
        return max(max(memory_us, compute_us) + penalty * min(memory_us, compute_us), floor)

    def coresident_phases_us(self, sizes: list[tuple[int, int]], smem_bytes: int) -> list[float]:
        """Phase j: attention of micro-batch j beside post/pre_attn of micro-batch (j+1) % n,
        as in `interleaved_phases_us`, both on every SM."""
        return [self.coresident_phase_us(
                    self.coresident_attention_us(tokens, kv_tokens, smem_bytes),
                    self.coresident_linear_us(other, smem_bytes), moved, smem_bytes,
                    (tokens + other) / 2)
                for tokens, kv_tokens, other, moved in self._phase_pairs(sizes)]

    def coresident_fill_drain_us(self, sizes: list[tuple[int, int]], smem_bytes: int) -> float:
        """The prologue and epilogue (as `fill_drain_us`), then each micro-batch's final norm and
        LM head: the compute side's kernels at their co-resident speed, alone."""
        sms = self.profile.sm_count

        def compute(tokens: float, us: float) -> float:
            return us * self.coresident_factors(smem_bytes, tokens)[1]

        fill = compute(sizes[0][0], self.pre_attn_us(sizes[0][0], sms))
        fill += sum(compute(t, self.post_attn_us(t, sms)) for t, _ in sizes[1:])
        return fill + sum(compute(t, self.head_us(t)) for t, _ in sizes)

    def coresident_step_us(self, sizes: list[tuple[int, int]], smem_bytes: int) -> float:
        layers = self.model.num_layers * sum(self.coresident_phases_us(sizes, smem_bytes))
        return layers + self.coresident_fill_drain_us(sizes, smem_bytes)
