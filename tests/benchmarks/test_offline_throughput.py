"""The offline-throughput benchmark's pure parts (workloads, roofline bound, targets and
tables), and its whole flow on a tiny model on the CPU."""

import math

import numpy as np
import pytest
import torch

import offline_report
import offline_throughput
from offline_workloads import (Workload, kv_capacity_tokens, make_workload, prefill_counts,
                               roofline_bound)
from pipedecode import counts
from pipedecode.models import build_model, model_shape
from pipedecode.planner.cost import CostModel
from pipedecode.profiles.analytic import BUILTIN

SHAPE, PROFILE = model_shape("llama-3-8b"), BUILTIN["h100"]


def test_workloads_have_their_sizes_ranges_and_seeds():
    a, c = make_workload("a"), make_workload("c", scale=0.1)
    assert a.num_requests == 256 and a.ignore_eos and c.num_requests == 100
    assert min(a.prompt_lens + a.output_lens) >= 100 and max(a.prompt_lens + a.output_lens) <= 1024
    assert set(c.prompt_lens) == set(c.output_lens) == {1024}
    assert make_workload("a") == a and make_workload("a", seed=1) != a
    quarter = make_workload("a", scale=0.25)
    assert quarter.num_requests == 64 and 400 < np.mean(quarter.output_lens) < 720
    with pytest.raises(ValueError, match="unknown workload 'd'"):
        make_workload("d")
    with pytest.raises(ValueError, match="scale"):
        make_workload("a", scale=0)


def test_sharegpt_workload_is_the_simulators():
    """(b) draws its lengths with the simulator's generator (its own tests check the
    distribution), so a measured run and its simulation see the same requests."""
    from pipedecode.sim.workloads import sharegpt_shaped

    b = make_workload("b")
    drawn = sharegpt_shaped(1000, seed=0)
    assert b.num_requests == 1000 and not b.ignore_eos
    assert (b.prompt_lens, b.output_lens) == (drawn.prompt_lens, drawn.output_lens)
    assert make_workload("b", seed=3).prompt_lens == sharegpt_shaped(1000, seed=3).prompt_lens
    prompts = b.prompts(SHAPE.vocab_size)
    assert [len(p) for p in prompts] == list(b.prompt_lens)
    assert len({tuple(p) for p in prompts}) == 1000          # distinct, for the oracle
    assert prompts == drawn.prompts(SHAPE.vocab_size)


def test_roofline_bound_of_one_request_is_its_prefill_and_steps():
    cost = CostModel(SHAPE, PROFILE)
    one = Workload("x", (100,), (3,), key="x", ignore_eos=True)
    bound = roofline_bound(one, SHAPE, PROFILE)
    expected = cost.floor_us(prefill_counts(SHAPE, [100])) + \
        cost.floor_us(counts.step(SHAPE, 1, 101)) + cost.floor_us(counts.step(SHAPE, 1, 102))
    assert math.isclose(bound["seconds"], expected * 1e-6)
    assert bound["decode_steps"] == 2 and bound["largest_batch"] == 1
    assert math.isclose(bound["output_tokens_per_s"], 3 / bound["seconds"])


def test_roofline_bound_batches_up_to_what_the_memory_holds():
    w = Workload("x", (200,) * 8, (100,) * 8, key="x", ignore_eos=True)
    roomy = roofline_bound(w, SHAPE, PROFILE)
    tight = roofline_bound(w, SHAPE, PROFILE, capacity_tokens=2 * 300)
    assert roomy["largest_batch"] == 8 and tight["largest_batch"] == 2
    assert tight["decode_steps"] == 4 * 99 and roomy["decode_steps"] == 99
    assert roomy["output_tokens_per_s"] > 3 * tight["output_tokens_per_s"]   # weights shared
    assert kv_capacity_tokens(SHAPE, PROFILE) == \
        (PROFILE.memory_bytes - SHAPE.weight_bytes()) // SHAPE.kv_bytes_per_token()
    with pytest.raises(ValueError, match="exceeds the 100 KV tokens"):
        roofline_bound(w, SHAPE, PROFILE, capacity_tokens=100)


def _row(workload, system, out, policy=None, interleave=None, **extra):
    row = dict(workload=workload, system=system, policy=policy, interleave=interleave,
               predictor="online", status="ok", requests=10, output_tokens_per_s=out,
               total_tokens_per_s=2 * out, peak_gpu_gib=12.0, preemptions=0, peak_kv=0.5,
               prefill_s=1.0, decode_s=3.0, decode_steps=40, interleaved_steps=0,
               mean_decode_batch=9.0)
    row.update(extra)
    return row


def _result(rows):
    return {"gpu": "NVIDIA H200", "date": "2030-01-02T03:04+00:00", "commit": "abc1234",
            "model": "llama-3-8b", "layers": 32, "profile": "h200", "scale": {"a": 1.0, "b": 0.25},
            "workloads": ["a", "b"], "requests": {"a": 64, "b": 250}, "hf_requests": 64,
            "hf_batch": 64, "max_num_seqs": 1024, "kv_pool_gib": 90.5, "notes": "n.",
            "bounds": {"a": {"output_tokens_per_s": 6000.0, "total_tokens_per_s": 12000.0,
                             "seconds": 5.0, "largest_batch": 64, "prefill_share": 0.14}},
            "rows": rows}


def test_targets_are_met_missed_or_not_measured_with_their_numbers():
    rows = [_row("a", "transformers", 1000.0, subset=False),
            _row("a", "pipedecode", 3500.0, "temporal", False),
            _row("a", "pipedecode", 2500.0, "prefill-first", False),
            _row("b", "pipedecode", 4000.0, "temporal", False, preemptions=2, peak_kv=0.8),
            _row("b", "pipedecode", 4200.0, "prefill-first", False, preemptions=9),
            _row("b", "pipedecode", 9000.0, "temporal", False, predictor="oracle"),
            dict(workload="b", system="transformers", status="not run (time budget)")]
    result = _result(rows)
    got = {t["target"]: t for t in offline_report.targets(result)}
    assert got["(a) pipedecode >= 3x transformers"]["met"] is True
    assert "3.50x" in got["(a) pipedecode >= 3x transformers"]["detail"]
    assert got["(b) pipedecode >= 3x transformers"]["met"] is None
    temporal = got["(b) temporal >= prefill-first (interleave off)"]
    assert temporal["met"] is False and "preemptions 2 vs 9" in temporal["detail"]
    roof = got["(a) >= 50% of the roofline bound"]
    assert roof["met"] is True and roof["detail"].startswith("58%")
    assert offline_report.best_pipedecode(rows, "b")["policy"] == "prefill-first"  # oracle aside


def test_markdown_and_short_table():
    rows = [_row("a", "transformers", 1000.0, requests=32, subset=True),
            _row("a", "pipedecode", 3500.0, "temporal", True, interleaved_steps=7, plans=3,
                 plan_s=0.4),
            dict(workload="b", system="pipedecode", policy="temporal", interleave=False,
                 predictor="oracle", status="not run (time budget)")]
    result = _result(rows)
    result["targets"] = offline_report.targets(result)
    md = offline_report.markdown(result)
    assert md.startswith("# Offline throughput: NVIDIA H200") and "abc1234" in md
    assert "| transformers generate (static batches) | 32 (subset) | 1,000 | 2,000 | 12.0 |" in md
    assert "| pipedecode temporal, interleave on | 10 | 3,500 | 7,000 | 12.0 | 0 | 50% | 7/40 | " \
           "3 in 0.4 s | 1.00 | 3.00 |" in md
    assert "| pipedecode temporal, interleave off, oracle lengths | not run (time budget) |" in md
    assert "Roofline bound: 6,000 output / 12,000 total tokens/s" in md
    assert "only the interleave" not in md and "every prefill eager" not in md
    assert "; every prefill eager (no prefill graphs)" in offline_report.markdown(
        dict(result, prefill_graphs="off"))
    assert offline_throughput.parse_args(["--prefill-graphs", "off"]).prefill_graphs == "off"
    assert "; only the interleave-off cells ran." in offline_report.markdown(
        dict(result, interleave=["off"]))
    assert "requests kept per workload: (a) 1, (b) 0.25" in md
    assert "- (a) pipedecode >= 3x transformers: **met**" in md
    assert "**not measured**" in md
    table = offline_report.short_table(result).splitlines()
    assert table[1].split()[:4] == ["a", "1,000", "3,500", "6,000"]
    assert any(line.strip().startswith("met") for line in table[3:])


def test_the_whole_flow_on_a_tiny_model_on_the_cpu():
    model = build_model("tiny-llama", dtype=torch.float32, seed=0)
    model.generation_config.eos_token_id = model.config.eos_token_id = None
    args = offline_throughput.parse_args(["--max-num-seqs", "4", "--hf-requests", "2",
                                          "--hf-batch", "2", "--only", "a,b"])
    workloads = {"a": Workload("a", (5, 7, 3), (3, 4, 2), key="a", ignore_eos=True),
                 "b": Workload("b", (4, 6, 8), (2, 5, 3), key="b", ignore_eos=False)}
    result = offline_throughput.run(args, model, BUILTIN["h100"], workloads)
    rows = result["rows"]
    assert [r["status"] for r in rows] == ["ok"] * len(rows) and len(rows) == 2 + 4 * 2 + 1
    hf = [r for r in rows if r["system"] == "transformers"]
    assert all(r["requests"] == 2 and r["subset"] for r in hf)
    for r in rows:
        if r["system"] == "pipedecode":
            assert r["requests"] == 3 and r["decode_steps"] > 0 and r["interleaved_steps"] == 0
    assert result["warmup_s"] > 0 and result["kv_pool_gib"] > 0
    assert {t["target"] for t in result["targets"]} >= {"(a) pipedecode >= 3x transformers",
                                                        "(a) >= 50% of the roofline bound"}
    offline_report.markdown(result)
    args.budget_s = 0.0
    late = offline_throughput.run(args, model, BUILTIN["h100"], workloads)
    assert late["scale"] == {"a": 0.25, "b": 0.25}
    assert {r["status"] for r in late["rows"]} == {"not run (time budget)"}


def test_scale_is_one_number_or_one_per_workload():
    assert offline_throughput.parse_scale("0.5") == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert offline_throughput.parse_scale("a=1,c=0.1") == {"a": 1.0, "b": 0.25, "c": 0.1}
    with pytest.raises(ValueError, match="unknown workload 'd'"):
        offline_throughput.parse_scale("d=1")
    with pytest.raises(SystemExit):
        offline_throughput.parse_args(["--scale", "a=x"])


def test_cells_keep_each_workload_together_and_alternate_their_order():
    cells = offline_throughput._cells(["a", "b", "c"])
    assert [c["system"] for c in cells[:3]] == ["transformers"] * 3
    ours = cells[3:]
    assert [c["workload"] for c in ours] == ["a"] * 4 + ["b"] * 5 + ["c"] * 4
    first = {k: next(c["interleave"] for c in ours if c["workload"] == k) for k in "abc"}
    assert first == {"a": False, "b": True, "c": False}
    leading = [c["policy"] for c, prev in zip(ours, [None] + ours[:-1])
               if prev is None or (prev["workload"], prev["interleave"])
               != (c["workload"], c["interleave"])]
    assert leading == ["temporal", "prefill-first"] * 3
    oracle = [c for c in ours if c["predictor"] == "oracle"]
    assert len(oracle) == 1 and oracle[0]["workload"] == "b" and not oracle[0]["interleave"]


def test_interleave_option_keeps_only_those_cells():
    args = offline_throughput.parse_args(["--interleave", "off", "--only", "c"])
    cells = offline_throughput._cells(args.only, args.interleave)
    assert [(c["system"], c.get("policy"), c.get("interleave")) for c in cells] == [
        ("transformers", None, None), ("pipedecode", "temporal", False),
        ("pipedecode", "prefill-first", False)]
    with pytest.raises(SystemExit):
        offline_throughput.parse_args(["--interleave", "sometimes"])


def test_repeats_keep_the_median_run_and_list_them_all():
    runs = [dict(output_tokens_per_s=v, decode_s=v / 10) for v in (30.0, 10.0, 20.0)]
    row = offline_throughput.median_run(runs)
    assert row["output_tokens_per_s"] == 20.0 and row["decode_s"] == 2.0
    assert row["output_tokens_per_s_runs"] == [30.0, 10.0, 20.0]
    assert offline_throughput.median_run(runs[:2])["output_tokens_per_s"] == 10.0
    assert "output_tokens_per_s_runs" not in offline_throughput.median_run(runs[:1])
    assert offline_report._tokens_text(dict(row, output_tokens_per_s=2000.0,
                                            output_tokens_per_s_runs=[1900.0, 2000.0, 2100.5])) \
        == "2,000 (1,900-2,100 in 3 runs)"
    assert offline_throughput.parse_args(["--repeats", "3"]).repeats == 3
    with pytest.raises(SystemExit):
        offline_throughput.parse_args(["--repeats", "0"])
