import json
import statistics
from pathlib import Path

import pytest

from pipedecode.models import model_shape
from pipedecode.planner.cost import CostModel
from pipedecode.profiles import load_profile
from pipedecode.sim.engine_costs import (BENCH_HOST_US_PER_SEQ, HOST_PARTS,
                                         PREFILL_LAUNCH_US_PER_LAYER, EngineCosts,
                                         per_sequence_rates)

H200 = load_profile("h200")
COST = CostModel(model_shape("llama-3-8b"), H200)
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_the_shipped_host_rates_are_the_cpu_benchmarks_fit():
    rows = json.loads((RESULTS / "engine_host_overhead_cpu.json").read_text())["rows"]
    fitted = per_sequence_rates(rows)
    assert fitted == pytest.approx(BENCH_HOST_US_PER_SEQ, abs=1e-4)
    # 256 sequences: the four parts sum to the benchmark's ~230 us total
    assert 256 * sum(fitted.values()) == pytest.approx(230, rel=0.1)


def test_rates_are_fitted_through_the_origin_by_least_squares():
    rows = [dict(seqs=n, **{f"{p}_us": y * (i + 1) for i, p in enumerate(HOST_PARTS)})
            for n, y in ((1, 2.0), (3, 3.0))]
    # sum(n y) / sum(n^2) = (2 + 9) / 10 per unit of each part's multiple
    assert per_sequence_rates(rows) == pytest.approx(
        {p: 1.1 * (i + 1) for i, p in enumerate(HOST_PARTS)})
    with pytest.raises(ValueError, match="no host-overhead rows"):
        per_sequence_rates([])


def test_a_decode_step_runs_the_runners_bucket():
    engine = EngineCosts(max_num_seqs=1024)
    assert [engine.decode_rows(n) for n in (1, 3, 17, 250, 256, 257, 513, 1000)] == \
        [1, 4, 32, 256, 256, 288, 576, 1024]
    assert EngineCosts(max_num_seqs=100).decode_rows(97) == 100     # the largest is its own
    assert EngineCosts(max_num_seqs=1024, padding=False).decode_rows(250) == 250
    assert EngineCosts(max_num_seqs=64).decode_rows(200) == 200     # past the buckets


def test_sampling_moves_ten_bytes_per_logit_at_the_hbm_bandwidth():
    engine = EngineCosts()
    rows = 250
    expected = rows * 128256 * 10 / H200.hbm_bytes_per_s * 1e6 + 2 * H200.launch_overhead_us
    assert engine.sampling_us(COST, rows) == pytest.approx(expected)
    assert 60 < engine.sampling_us(COST, rows) < 90                 # ~73 us on the H200
    assert engine.sampling_us(COST, 2 * rows) > 1.9 * engine.sampling_us(COST, rows)
    assert EngineCosts(sampling=False).sampling_us(COST, rows) == 0.0


def test_host_time_is_the_factor_times_the_parts_rates_per_sequence():
    engine = EngineCosts(host_factor=2.0)
    rates = BENCH_HOST_US_PER_SEQ
    assert engine.host_us(("schedule", "stage"), 100) == \
        pytest.approx(2.0 * 100 * (rates["schedule"] + rates["stage"]))
    assert engine.host_us(HOST_PARTS, 0) == 0.0
    assert EngineCosts.off().host_us(HOST_PARTS, 500) == 0.0
    off = EngineCosts.off()
    assert (off.decode_rows(250), off.sampling_us(COST, 250)) == (250, 0.0)


def test_a_prefill_lasts_at_least_its_measured_launches():
    measured = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results"
                           / "prefill_overhead_h200.json").read_text())
    per_layer = statistics.median(r["enqueue_us"] for r in measured["rows"]) / measured["layers"]
    assert PREFILL_LAUNCH_US_PER_LAYER == pytest.approx(per_layer, rel=0.01)
    engine, floor = EngineCosts(), 32 * PREFILL_LAUNCH_US_PER_LAYER
    small, big = [100, 37], [4096, 4096]
    assert COST.prefill_us(small) < floor < COST.prefill_us(big)
    assert engine.prefill_us(COST, small, graphs=False) == pytest.approx(floor)
    assert engine.prefill_us(COST, big, graphs=False) == COST.prefill_us(big)
    assert engine.prefill_us(COST, big) == COST.prefill_us(big)        # past every bucket
    # from its graph: the GEMMs over the 256-token bucket's padded tokens
    padded = COST.linear_us(256, H200.sm_count) - COST.linear_us(137, H200.sm_count)
    assert engine.prefill_us(COST, small) == pytest.approx(COST.prefill_us(small) + 32 * padded)
    assert engine.prefill_us(COST, small) < floor
    assert EngineCosts(prefill_graphs=False).prefill_us(COST, small) == pytest.approx(floor)
    assert EngineCosts.off().prefill_us(COST, small) == COST.prefill_us(small)
    with pytest.raises(ValueError, match="prefill_launch_us_per_layer must be a number >= 0"):
        EngineCosts(prefill_launch_us_per_layer=-1.0)


def test_bad_engine_costs_are_refused_with_the_field():
    with pytest.raises(ValueError, match="host_factor must be a number >= 0"):
        EngineCosts(host_factor=-1.0)
    with pytest.raises(ValueError, match="host_us_per_seq needs rates"):
        EngineCosts(host_us_per_seq=(("schedule", 1.0),))
    with pytest.raises(ValueError, match="max_num_seqs must be positive"):
        EngineCosts(max_num_seqs=0)
