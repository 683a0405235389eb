"""The decode-step targets from hand-made rows (no GPU)."""

import pytest

import decode_step_targets as t


def _row(name, seq, guarded, unguarded=None, predicted=None, op_floor=None, co=None):
    row = {"name": name, "sequential_us": seq, "planner_guarded_us": guarded,
           "planner_unguarded_us": unguarded or guarded}
    if predicted:
        row["planner_predicted_us"] = predicted
    if op_floor:
        row["op_floor_us"] = op_floor
    if co:
        row["coresident_best_us"] = co
    return row


def test_every_target_met():
    rows = [_row("a", 1300.0, 1000.0, predicted=1010.0, op_floor=1200.0, co=1000.0),
            _row("b", 1150.0, 1000.0, predicted=990.0, op_floor=1000.0),
            _row("c", 1120.0, 1000.0, predicted=1040.0, op_floor=1100.0),
            _row("d", 1000.0, 1005.0, predicted=1000.0, op_floor=900.0),
            {"name": "e", "skipped": "does not fit"}]
    got = t.targets(rows)
    assert got["points"] == 4
    assert got["best_speedup"]["best"] == pytest.approx(1.3) and got["best_speedup"]["met"]
    assert got["speedup_points"]["points"] == ["a", "b", "c"] and got["speedup_points"]["met"]
    assert got["never_slower"]["worst_at"] == "d" and got["never_slower"]["met"]   # 0.995x
    assert got["sequential_floor"]["worst"] == pytest.approx(1000 / 1150) and \
        got["sequential_floor"]["met"]
    assert got["prediction"]["median"] == pytest.approx(0.01) and got["prediction"]["met"]
    assert got["coresident"]["faster_than_sequential"] == ["a"]


def test_each_target_can_be_missed():
    rows = [_row("a", 1200.0, 1000.0, predicted=1100.0, op_floor=1100.0),
            _row("b", 1000.0, 1020.0, unguarded=1200.0, predicted=1000.0, op_floor=800.0)]
    got = t.targets(rows)
    assert not got["best_speedup"]["met"] and got["best_speedup"]["best"] == pytest.approx(1.2)
    assert not got["speedup_points"]["met"] and got["speedup_points"]["count"] == 1
    assert not got["never_slower"]["met"] and got["never_slower"]["below"] == ["b"]
    assert not got["sequential_floor"]["met"] and got["sequential_floor"]["below"] == ["b"]
    # errors against the unguarded time: 10% at a, 16.7% at b
    assert got["prediction"]["median"] == pytest.approx((0.1 + 200 / 1200) / 2)
    assert not got["prediction"]["met"]
    text = "\n".join(t.lines({"targets": got}))
    assert text.count("**not met**") == 5 and "**met**" not in text


def test_old_field_names_are_read():
    assert t.timed({"planner_us": 5.0, "planner_guard_us": 4.0}) == (4.0, 5.0)
    assert t.timed({"planner_us": 5.0}) == (5.0, 5.0)
    assert t.timed({}) == (None, None)
    assert "no point ran a planner schedule" in "\n".join(t.lines({"rows": [
        {"name": "x", "sequential_us": 1.0}]}))
