import json

import pytest

from pipedecode.sim.strategies import SimOptions
from pipedecode.sim.sweep import SweepSpec, run_sweep

SMALL = dict(models=("llama-3-8b", "llama-3-70b"), gpus=(1, 2), workload="uniform:16:64:4:16",
             requests=24, options=SimOptions(seqs_per_gpu=8))


@pytest.fixture(scope="module")
def small():
    return run_sweep(SweepSpec(**SMALL), progress=False)


def test_every_feasible_point_is_simulated_and_the_others_say_why(small):
    # 8B: 1 GPU x 3 strategies listed under both links, 2 GPUs x 3 x 2; 70B: 2 GPUs only
    assert len(small.points) == 6 + 6 + 6
    assert {(k["model"], k["gpus"]) for k in small.skipped} == {("llama-3-70b", 1)}
    assert all("weights" in k["reason"] for k in small.skipped)


def test_one_gpu_has_no_link_so_its_point_is_the_same_under_each(small):
    one = [p for p in small.points if p.gpus == 1 and p.strategy == "tdpipe"]
    assert sorted(p.link for p in one) == ["nvlink4", "pcie5"]
    assert one[0].makespan_s == one[1].makespan_s
    two = {p.link: p for p in small.points if p.gpus == 2 and p.strategy == "tensor"
           and p.model == "llama-3-8b"}
    assert two["pcie5"].makespan_s > two["nvlink4"].makespan_s      # all-reduces over PCIe


def test_the_json_records_the_points_and_every_assumption(small):
    data = json.loads(small.to_json())
    assert data["version"] == 1 and data["simulated"] is True
    assert len(data["points"]) == len(small.points)
    assert "GB/s" in data["assumptions"]["links"]["pcie5"]
    assert "measured profile" in data["assumptions"]["device"]
    assert data["workload"]["requests"] == 24


def test_two_processes_give_the_same_points_as_one(small):
    spec = SweepSpec(**{**SMALL, "models": ("llama-3-8b",), "gpus": (2,)})
    one, two = run_sweep(spec, progress=False), run_sweep(spec, progress=False, jobs=2)
    assert [p.makespan_s for p in one.points] == [p.makespan_s for p in two.points]


@pytest.mark.parametrize("bad, message", [
    (dict(strategies=("dp",)), "unknown strategies"),
    (dict(gpus=(0,)), "GPU counts must be positive"),
    (dict(links=("ib",)), "unknown link"),
    (dict(models=()), "at least one model")])
def test_bad_sweeps_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        SweepSpec(**{**SMALL, **bad})
