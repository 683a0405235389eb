import pytest

from pipedecode.profiles import (AttentionPoint, DeviceProfile, GemmPoint, attention_latency_us,
                                 bandwidth_bytes_per_s, gemm_latency_us)
from pipedecode.profiles.analytic import BUILTIN
from pipedecode.profiles.latency import analytic_attention_us, analytic_gemm_us


def _with_tables(**tables) -> DeviceProfile:
    return DeviceProfile(**{**BUILTIN["h100"].__dict__, "source": "measured", **tables})


def test_bandwidth_table_points_and_interpolation():
    h100 = BUILTIN["h100"]
    assert bandwidth_bytes_per_s(h100, 64) == pytest.approx(2.87e12)
    assert bandwidth_bytes_per_s(h100, 56) == pytest.approx((2.65e12 + 2.87e12) / 2)
    assert bandwidth_bytes_per_s(h100, 4) == pytest.approx(0.61e12 / 2)   # proportional below
    assert bandwidth_bytes_per_s(h100, 200) == pytest.approx(3.08e12)      # flat above


def test_saturation_model_without_table_is_monotone_and_capped():
    a100 = BUILTIN["a100"]
    values = [bandwidth_bytes_per_s(a100, s) for s in range(4, 109, 4)]
    assert values == sorted(values) and values[-1] < a100.hbm_bytes_per_s
    assert values[-1] > 0.95 * a100.hbm_bytes_per_s


def test_gemm_table_exact_at_points_linear_between_scaled_outside():
    points = (GemmPoint(64, 4096, 4096, 64, 30.0), GemmPoint(256, 4096, 4096, 64, 50.0),
              GemmPoint(64, 4096, 4096, 128, 20.0), GemmPoint(256, 4096, 4096, 128, 40.0))
    p = _with_tables(gemm_latency=points)
    assert gemm_latency_us(p, 64, 4096, 4096, 64) == pytest.approx(30.0)
    assert gemm_latency_us(p, 160, 4096, 4096, 64) == pytest.approx(40.0)
    assert gemm_latency_us(p, 160, 4096, 4096, 96) == pytest.approx(35.0)
    # above the largest token count: the point at 256, scaled by the analytic ratio
    ratio = analytic_gemm_us(p, 1024, 4096, 4096, 128) / analytic_gemm_us(p, 256, 4096, 4096, 128)
    assert gemm_latency_us(p, 1024, 4096, 4096, 128) == pytest.approx(40.0 * ratio)
    # other shapes fall back to the analytic model
    expected = analytic_gemm_us(p, 64, 1024, 4096, 64)
    assert gemm_latency_us(p, 64, 1024, 4096, 64) == pytest.approx(expected)


def test_gemm_extrapolated_beyond_the_table_never_beats_the_peak():
    """A table point faster than the analytic model (here 1 us at 256 tokens) scaled up to 8192
    tokens would pass the tensor cores' peak; the answer is held at what the peak allows."""
    from pipedecode import counts
    from pipedecode.profiles.latency import flops_per_sm

    points = (GemmPoint(64, 4096, 4096, 128, 0.5), GemmPoint(256, 4096, 4096, 128, 1.0))
    p = _with_tables(gemm_latency=points)
    peak_us = counts.gemm(8192, 4096, 4096, 2).flops / (flops_per_sm(p) * 128) * 1e6
    scaled = 1.0 * analytic_gemm_us(p, 8192, 4096, 4096, 128) / \
        analytic_gemm_us(p, 256, 4096, 4096, 128)
    assert scaled < peak_us                                  # what the ratio alone would say
    assert gemm_latency_us(p, 8192, 4096, 4096, 128) == pytest.approx(peak_us)
    assert gemm_latency_us(p, 256, 4096, 4096, 128) == pytest.approx(1.0)   # measured: kept


def test_interpolating_at_the_sm_counts_around_the_partition_only_changes_nothing():
    import random

    from pipedecode.profiles import load_profile
    from pipedecode.profiles.latency import _index, _interp_1d, _interp_2d

    def every_count(rows, work, sm_count, analytic):      # interpolate at each, then across
        values = [_interp_1d(*rows[s], work, lambda w, s=s: analytic(w, s)) for s in rows]
        return _interp_1d(list(rows), values, sm_count, lambda s: analytic(work, s))

    profile = load_profile("h200")
    gemms, attention = _index(profile)
    assert gemms and attention
    rng = random.Random(0)
    for (n, k), rows in gemms.items():
        for sms in list(rows) + [1, 8, 20, 140, 200] + [rng.uniform(1, 160) for _ in range(8)]:
            tokens = rng.choice([1, 7, 64, 300, 4096, 20000])

            def analytic(t, s, n=n, k=k):
                return analytic_gemm_us(profile, t, n, k, s)

            got = _interp_2d(rows, tokens, sms, analytic)
            assert got == every_count(rows, tokens, sms, analytic), (n, k, tokens, sms)
            beyond = tokens > max(xs[-1] for xs, _ in rows.values())   # held at the peak
            answer = gemm_latency_us(profile, tokens, n, k, sms)
            assert answer >= got if beyond else answer == got
    for key, rows in attention.items():
        for sms in (8, 16, 40, 132, 150):
            kv = rng.choice([1e3, 1e5, 3e6])

            def analytic(w, s, key=key):
                return analytic_attention_us(profile, 64, w / 64, *key, s)

            assert _interp_2d(rows, kv, sms, analytic) == every_count(rows, kv, sms, analytic)


def test_attention_table_interpolates_in_kv_tokens():
    points = (AttentionPoint(8, 1024, 32, 8, 128, 64, 10.0),
              AttentionPoint(8, 4096, 32, 8, 128, 64, 34.0))
    p = _with_tables(attention_latency=points)
    assert attention_latency_us(p, 8, 2560, 32, 8, 128, 64) == pytest.approx(22.0)
    assert attention_latency_us(p, 16, 1280, 32, 8, 128, 64) == pytest.approx(22.0)
    fallback = attention_latency_us(p, 8, 1024, 32, 32, 128, 64)
    assert fallback == pytest.approx(analytic_attention_us(p, 8, 1024, 32, 32, 128, 64))


def test_analytic_attention_is_bandwidth_bound_and_slower_on_fewer_sms():
    h100 = BUILTIN["h100"]
    # 512 sequences x 1024 context, Llama-3-8B GQA: 2 GiB of K and V
    kv_bytes = 512 * 1024 * 8 * 128 * 2 * 2
    full = analytic_attention_us(h100, 512, 1024, 32, 8, 128, 132)
    assert full == pytest.approx(kv_bytes / 3.08e12 * 1e6, rel=0.02)
    assert analytic_attention_us(h100, 512, 1024, 32, 8, 128, 32) > 1.4 * full


def test_decode_gemm_suffers_wave_quantization():
    h100 = BUILTIN["h100"]
    # 512 tokens x 6144 outputs: 4 x 48 = 192 tiles -> 2 waves on 100 SMs, 2 on 132
    t100 = analytic_gemm_us(h100, 4096, 6144, 4096, 100)
    t132 = analytic_gemm_us(h100, 4096, 6144, 4096, 132)
    assert t100 > t132


def test_corun_slowdown_follows_the_samples_by_memory_partition_size():
    from pipedecode.profiles import CorunSample, corun_slowdown

    analytic = BUILTIN["h100"]
    assert corun_slowdown(analytic, 64) == 1.0
    samples = (CorunSample(32, 100, 500.0, 300.0, 550.0),    # 1.1
               CorunSample(64, 68, 800.0, 520.0, 1360.0))    # 1.7
    measured = _with_tables(corun_samples=samples, corun_slowdown=1.4)
    assert corun_slowdown(measured, 32) == pytest.approx(1.1)
    assert corun_slowdown(measured, 48) == pytest.approx(1.4)
    assert corun_slowdown(measured, 8) == pytest.approx(1.1)      # nearest sample outside
    assert corun_slowdown(measured, 120) == pytest.approx(1.7)
    faster = _with_tables(corun_samples=(CorunSample(32, 100, 500.0, 300.0, 450.0),))
    assert corun_slowdown(faster, 32) == 1.0                       # never below 1


def test_corun_time_charges_the_overlapped_work_and_reproduces_each_sample():
    from pipedecode.profiles import CorunSample
    from pipedecode.profiles.latency import corun_us, corun_weights

    assert corun_weights(BUILTIN["h100"], 64) == (1.0, 0.0)            # analytic: slowdown 1
    samples = (CorunSample(32, 100, 500.0, 300.0, 530.0),    # penalty (530-500)/300 = 0.1
               CorunSample(64, 68, 800.0, 520.0, 1320.0))    # (1320-800)/520 = 1.0
    measured = _with_tables(corun_samples=samples, corun_slowdown=1.3)
    for sample in samples:            # each measured pair is predicted as measured
        assert corun_us(measured, sample.memory_sms, sample.memory_alone_us,
                        sample.compute_alone_us) == pytest.approx(sample.together_us)
    assert corun_weights(measured, 48) == pytest.approx((1.0, 0.55))   # between the samples
    # a short side beside a long one costs little; two equal sides cost the most
    assert corun_us(measured, 32, 1000.0, 10.0) == pytest.approx(1001.0)
    assert corun_us(measured, 32, 1000.0, 1000.0) == pytest.approx(1100.0)
    worse = CorunSample(32, 100, 500.0, 300.0, 900.0)         # slower than one after the other
    assert worse.overlap_penalty == 1.0
