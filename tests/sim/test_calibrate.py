import pytest

from pipedecode.profiles import load_profile
from pipedecode.sim.calibrate import Measured, compare, fit_host_factor, markdown, phase_markdown
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


def _phased(factor: float) -> Measured:
    """RUN measured with phases whose untimed host time is `factor` x the simulated one at a
    host factor of 1."""
    at_one = compare(Measured(output_tokens_per_s=1.0, total_tokens_per_s=1.0, **RUN),
                     SimOptions(host_factor=1.0)).simulated
    return Measured(output_tokens_per_s=1.0, total_tokens_per_s=1.0, prefill_s=at_one.prefill_s,
                    decode_s=at_one.decode_s, decode_steps=at_one.decode_steps,
                    elapsed_s=at_one.prefill_s + at_one.decode_s
                    + factor * at_one.untimed_host_s, **RUN)


def test_the_host_factor_fit_recovers_the_factor_the_untimed_time_was_made_with():
    assert fit_host_factor([_phased(2.0)]) == pytest.approx(2.0, rel=1e-9)
    assert fit_host_factor([_phased(0.5), _phased(1.5)]) == pytest.approx(1.0, rel=1e-9)
    with pytest.raises(ValueError, match="needs measured runs with elapsed_s"):
        fit_host_factor([Measured(output_tokens_per_s=1.0, total_tokens_per_s=1.0, **RUN)])


def test_phases_are_compared_where_measured_and_tabled():
    c = compare(_phased(3.0), SimOptions(host_factor=3.0))
    got = {name: (m, s) for name, m, s in c.phases()}
    assert set(got) == {"elapsed_s", "prefill_s", "decode_s", "untimed_s", "decode_steps"}
    assert got["untimed_s"][0] == pytest.approx(got["untimed_s"][1])
    assert got["decode_steps"][0] == got["decode_steps"][1] == c.simulated.decode_steps
    table = phase_markdown([c])
    assert "untimed s" in table and "(+0.0%)" in table and "| - |" in table  # no batch given
    bare = compare(Measured(output_tokens_per_s=1.0, total_tokens_per_s=1.0, **RUN))
    assert bare.phases() == [] and phase_markdown([bare]) == ""
    with pytest.raises(ValueError, match="prefill_s must be a number >= 0"):
        Measured(output_tokens_per_s=1.0, total_tokens_per_s=1.0, prefill_s=-1.0, **RUN)
