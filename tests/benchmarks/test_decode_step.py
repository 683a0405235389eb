"""The decode-step benchmark script imports and parses without a GPU, and says it needs one."""

import pytest
import torch

import decode_step


def test_options_parse_into_lists():
    args = decode_step.parse_args(["--splits", "32,64", "--points", "64x512,mixed",
                                   "--extra", "1024x256", "--micro-batches", "2,3"])
    assert args.splits == [32, 64] and args.micro_batches == [2, 3]
    assert args.points == {"64x512", "mixed"} and args.extra == [(1024, 256)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_without_a_gpu_it_exits_2_in_one_line(capsys, tmp_path):
    assert decode_step.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "decode_step: needs a CUDA GPU\n"
    assert not list(tmp_path.iterdir())


def _planned(mode, groups, lens):
    from pipedecode.models import model_shape
    from pipedecode.runtime.program import manual_schedule

    shape = model_shape("llama-3-8b")
    if mode == "coresident":
        return manual_schedule(shape, lens, groups, 132, 132, mode=mode,
                               attention_smem_bytes=65536)
    return manual_schedule(shape, lens, groups, 48, 84)


def test_candidates_time_the_plan_guarded_and_not_and_its_micro_batches_coresident():
    from pipedecode.models import model_shape

    shape, lens = model_shape("llama-3-8b"), [512] * 8
    args = decode_step.parse_args(["--splits", "48", "--coresident-kib", "64,48"])
    interleaved = _planned("interleaved", [[0, 1, 2, 3], [4, 5, 6, 7]], lens)
    got = {name: (s, guarded) for name, s, _, guarded in
           decode_step.candidates(shape, lens, args, interleaved, 132)}
    assert list(got) == ["planner", "planner+guard", "coresident_planner", "co64", "co48",
                         "split48"]
    assert got["planner+guard"][1] and not got["planner"][1]
    co = got["coresident_planner"][0]
    assert co.mode == "coresident" and co.attention_smem_bytes == 65536
    assert [mb.request_ids for mb in co.micro_batches] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert got["co48"][0].attention_smem_bytes == 48 * 1024 and got["co48"][0].memory_sms == 132
    planned_co = _planned("coresident", [[0, 2, 4, 6], [1, 3, 5, 7]], lens)
    names = [c[0] for c in decode_step.candidates(shape, lens, args, planned_co, 132)]
    assert names[:3] == ["planner", "planner+guard", "co64"]      # already co-resident


def test_summary_names_guarded_and_unguarded_and_drops_fallbacks():
    lens = [512] * 8
    plan = _planned("coresident", [[0, 1, 2, 3], [4, 5, 6, 7]], lens)
    timed = {"planner": 90.0, "planner+guard": 95.0, "co64": 80.0, "co48": 70.0,
             "split48": 85.0}
    infos = {"planner": {"mode": "coresident"}, "planner+guard": {"mode": "sequential"},
             "co64": {"mode": "coresident"},
             "co48": {"mode": "sequential", "fallback_reason": "no TMA kernel"},
             "split48": {"mode": "interleaved"}}
    row = decode_step.summarize(timed, infos, plan)
    assert (row["planner_unguarded_us"], row["planner_guarded_us"]) == (90.0, 95.0)
    assert row["planner_guard_kept"] == "sequential" and "planner_fallback" not in row
    assert (row["coresident_best"], row["coresident_best_us"]) == ("co64", 80.0)
    assert row["interleaved_best_split"] == "split48"
    assert row["runs"]["co48"]["fallback_reason"] == "no TMA kernel"
    sequential = decode_step.summarize({"planner": 100.0}, {"planner": {"mode": "sequential"}},
                                       _planned("interleaved", [[0, 1], [2, 3, 4, 5, 6, 7]],
                                                lens))
    assert sequential["planner_guarded_us"] == sequential["planner_unguarded_us"] == 100.0
    assert "planner_fallback" in sequential       # planned interleaved, ran sequential


def test_quick_takes_the_overlapping_points_only():
    args = decode_step.parse_args(["--quick"])
    assert args.models == "llama-3-8b" and args.splits == []
    assert args.points == {"512x512", "1024x512", "2048x256", "768x1024"}
    assert set(args.extra) == {(2048, 256), (768, 1024)}
    assert decode_step.parse_args(["--splits", ""]).splits == []
