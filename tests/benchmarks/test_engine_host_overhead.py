"""The engine host-overhead benchmark on a few steps: its rows, the queued case, the tables."""

import engine_host_overhead


def test_rows_and_the_temporal_policys_decision_with_requests_queued():
    plain = engine_host_overhead.measure(8, 5, "prefill-first")
    assert plain["total_us"] > 0 and plain["steps"] == 5
    queued = engine_host_overhead.measure_switch_check(8, waiting=20, free_seats=4, calls=5)
    assert (queued["waiting"], queued["free_seats"], queued["calls"]) == (20, 4, 5)
    assert queued["admit_us"] > 0 and 0 <= queued["switched"] <= 5
    result = dict(date="2026-12-02", commit="abc1234", gpu="cpu", rows=[plain], queued=[queued])
    md = engine_host_overhead.markdown(result)
    assert "| 8 | prefill-first |" in md and "| 8 | 20 | 4 |" in md
    alone = engine_host_overhead.markdown(dict(result, rows=[]))
    assert "| running sequences | policy |" not in alone and "| 8 | 20 | 4 |" in alone
