import json

import pytest

from pipedecode.errors import ScheduleError
from pipedecode.planner import (MicroBatch, Schedule, Slot, SwitchPoint, check_model,
                                load_schedule, plan)
from pipedecode.profiles.analytic import BUILTIN


@pytest.fixture(scope="module")
def schedule(llama8b) -> Schedule:
    s = plan(llama8b, BUILTIN["h200"], [512] * 384 + [2048] * 128,
             remaining_output_lens=[50] * 256 + [300] * 256, waiting=[(512, 100)] * 16)
    assert s.mode == "interleaved" and s.switch is not None
    return s


def test_round_trip_through_a_file(schedule, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(schedule.to_json())
    again = load_schedule(path)
    assert again == schedule
    assert isinstance(again.switch, SwitchPoint) and isinstance(again.slots[0], Slot)
    assert json.loads(schedule.to_json())["version"] == 2


def _broken(schedule, tmp_path, mutate):
    data = json.loads(schedule.to_json())
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(version=99), "'version'"),
    (lambda d: d.update(version=1), "version 1 schedule"),      # it has mode_reason
    (lambda d: d.pop("slots"), "'slots'"),
    (lambda d: d.update(extra=1), "'extra'"),
    (lambda d: d["micro_batches"][0].pop("request_ids"), r"micro_batches\[0\]"),
    (lambda d: d["slots"][0].update(stage="lm_head"), r"slots\[0\]"),
    (lambda d: d["model"].update(hidden_size="big"), "'model'"),
    (lambda d: d.update(predicted_step_us=-1.0), "predicted_step_us"),
    (lambda d: d.update(mode="sideways"), "mode"),
    (lambda d: d["slots"][0].update(micro_batch=7), "micro_batch 7"),
    (lambda d: d["switch"].pop("step"), "'switch'"),
    (lambda d: d["slots"].pop(), "expected each of"),
    (lambda d: d["slots"][0].update(partition="compute"), "expected 'memory'"),
    (lambda d: d.update(phase_us=[1.0]), "phase_us has 1 entries"),
])
def test_bad_files_name_the_field(schedule, tmp_path, mutate, field):
    with pytest.raises(ScheduleError, match=field):
        load_schedule(_broken(schedule, tmp_path, mutate))


def test_malformed_json_and_missing_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{")
    with pytest.raises(ScheduleError, match="not valid JSON"):
        load_schedule(path)
    path.write_text("[1, 2]")
    with pytest.raises(ScheduleError, match="JSON object"):
        load_schedule(path)
    with pytest.raises(ScheduleError, match="cannot read"):
        load_schedule(tmp_path / "none.json")


def test_schedule_for_another_model_is_rejected(schedule, tmp_path):
    from pipedecode.models import ModelShape

    path = tmp_path / "s.json"
    path.write_text(schedule.to_json())
    other = ModelShape(**{**schedule.model.__dict__, "name": "llama-2-7b", "num_kv_heads": 32})
    with pytest.raises(ScheduleError, match="'model.num_kv_heads'.*plan again"):
        load_schedule(path, model=other)
    renamed = ModelShape(**{**schedule.model.__dict__, "name": "my-llama"})
    check_model(schedule, renamed)   # the same shape under another name is fine


def test_invariants_are_checked_on_construction(schedule):
    mb = MicroBatch(0, (1, 2), (10, 20))
    seq = (Slot("pre_attn", 0, "all", 0), Slot("attention", 0, "all", 1),
           Slot("post_attn", 0, "all", 2))
    assert Schedule(schedule.model, "h100", "sequential", 0, 132, (mb,), seq, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="expected each of"):
        Schedule(schedule.model, "h100", "sequential", 0, 132, (mb,), seq[:2], 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="memory_sms must be 0"):
        Schedule(schedule.model, "h100", "sequential", 8, 124, (mb,), (), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="two or more"):
        Schedule(schedule.model, "h100", "interleaved", 8, 124, (mb,), (), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="appears twice"):
        Schedule(schedule.model, "h100", "interleaved", 8, 124,
                 (mb, MicroBatch(1, (2,), (5,))), (), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="equally long"):
        MicroBatch(0, (1,), ())


@pytest.mark.parametrize("n", [2, 3, 5])
def test_interleaved_pattern_runs_each_stage_once_per_micro_batch(n):
    from pipedecode.planner.schedule import interleaved_pattern

    slots = interleaved_pattern(n)
    for mb in range(n):
        assert sorted(s.stage for s in slots if s.micro_batch == mb) == \
            ["attention", "post_attn", "pre_attn"]
    for phase in range(n):        # attention of one micro-batch beside another's compute
        here = [s for s in slots if s.phase == phase]
        (attn,) = [s.micro_batch for s in here if s.stage == "attention"]
        assert attn == phase and {s.micro_batch for s in here if s.stage != "attention"} == \
            {(phase + 1) % n}
    # the last phase's partner (micro-batch 0) is already a layer ahead
    assert [(s.stage, s.layer_offset) for s in slots if s.phase == n - 1][1:] == \
        [("post_attn", 0), ("pre_attn", 1)]
    with pytest.raises(ValueError, match="two or more"):
        interleaved_pattern(1)


def _coresident(model, **changes):
    from pipedecode.runtime.program import manual_schedule

    base = manual_schedule(model, [512] * 4, [[0, 2], [1, 3]], 132, 132, mode="coresident",
                           attention_smem_bytes=65536)
    return Schedule(**{**base.__dict__, "mode_reason": "coresident: predicted faster",
                       **changes})


def test_a_coresident_schedule_round_trips_and_keeps_its_budget(schedule, tmp_path):
    co = _coresident(schedule.model)
    path = tmp_path / "co.json"
    path.write_text(co.to_json())
    again = load_schedule(path)
    assert again == co and again.mode == "coresident" and again.attention_smem_bytes == 65536
    assert json.loads(co.to_json())["mode_reason"] == "coresident: predicted faster"


def test_coresident_invariants(schedule):
    with pytest.raises(ValueError, match="every SM"):
        _coresident(schedule.model, compute_sms=100)
    with pytest.raises(ValueError, match="every SM"):
        _coresident(schedule.model, attention_smem_bytes=0)
    with pytest.raises(ValueError, match="attention_smem_bytes is for coresident"):
        Schedule(**{**schedule.__dict__, "attention_smem_bytes": 4096})


def test_a_version_1_file_still_loads_and_may_not_claim_coresident(tmp_path):
    import glob
    import os

    shipped = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                                            "results", "decode_step_schedules_h100", "*.json")))
    data = json.loads(open(shipped[0]).read())
    assert data["version"] == 1 and "mode_reason" not in data
    old = Schedule.from_dict(data)
    assert old.version == 2 and old.mode_reason == "" and old.attention_smem_bytes == 0
    data["mode"] = "coresident"
    with pytest.raises(ScheduleError, match="version 1 schedule has no co-resident"):
        Schedule.from_dict(data)
