import pytest

from pipedecode.profiles import load_profile
from pipedecode.sim.calibrate import Measured, compare, markdown
from pipedecode.sim.links import LINKS
from pipedecode.sim.strategies import SimOptions, simulate_point
from pipedecode.sim.workloads import make_workload

RUN = dict(workload="uniform:32:256:8:64", policy="temporal", requests=60, seed=2,
           max_num_seqs=16, kv_blocks=120)


def _simulated():
    w = make_workload(RUN["workload"], 60, 2)
    return simulate_point("llama-3-8b", load_profile("h200"), LINKS["pcie5"], 1, "tdpipe", w,
                          SimOptions(seqs_per_gpu=16, kv_blocks=120, predictor="oracle"))


def test_the_simulator_compared_with_itself_is_exact_and_a_slower_run_is_not_within_10pct():
    sim = _simulated()
    same = compare(Measured(output_tokens_per_s=sim.output_tokens_per_s,
                            total_tokens_per_s=sim.total_tokens_per_s, **RUN))
    assert same.output_error == pytest.approx(0, abs=1e-12) and same.within_tolerance
    assert same.simulated.kv_blocks == 120 and same.simulated.gpus == 1
    slower = compare(Measured(output_tokens_per_s=sim.output_tokens_per_s / 1.2,
                              total_tokens_per_s=sim.total_tokens_per_s / 1.2, **RUN))
    assert slower.output_error == pytest.approx(0.2) and not slower.within_tolerance
    assert "+20.0%" in markdown([slower]) and "| no |" in markdown([slower])


def test_the_online_predictor_is_simulated_where_the_run_did_not_ignore_eos():
    # 120 blocks of 16 tokens hold a few requests: what the greedy prefill predicts matters
    online = compare(Measured(output_tokens_per_s=1.0, total_tokens_per_s=1.0,
                              **{**RUN, "ignore_eos": False}))
    assert online.simulated.output_tokens_per_s != _simulated().output_tokens_per_s


def test_a_measured_run_is_read_from_the_simple_dict_and_checked():
    m = Measured.from_dict(dict(workload="sharegpt", policy="prefill-first",
                                output_tokens_per_s=10.0, total_tokens_per_s=30.0,
                                elapsed_s=12.0))          # other keys are ignored
    assert m.requests == 1000 and m.model == "llama-3-8b" and m.device == "h200"
    with pytest.raises(ValueError, match="lacks total_tokens_per_s"):
        Measured.from_dict(dict(workload="sharegpt", policy="temporal", output_tokens_per_s=1))
    with pytest.raises(ValueError, match="policy 'fifo'"):
        Measured.from_dict(dict(workload="sharegpt", policy="fifo", output_tokens_per_s=1,
                                total_tokens_per_s=1))
    with pytest.raises(ValueError, match="positive number"):
        Measured(workload="sharegpt", policy="temporal", output_tokens_per_s=0,
                 total_tokens_per_s=1)
    with pytest.raises(ValueError, match="JSON object"):
        Measured.from_dict([1, 2])
