import pytest

from pipedecode.errors import InsufficientMemoryError
from pipedecode.profiles import load_profile
from pipedecode.sim.links import LINKS
from pipedecode.sim.strategies import SimOptions, replica_size, simulate_point
from pipedecode.sim.workloads import sharegpt_shaped, uniform

H200 = load_profile("h200")
W = uniform(48, (16, 128), (4, 24), seed=3)


def test_llama_70b_on_one_gpu_is_refused_with_the_reason():
    for strategy in ("tdpipe", "tensor"):
        with pytest.raises(InsufficientMemoryError, match="131.4 GiB of weights"):
            simulate_point("llama-3-70b", H200, LINKS["pcie5"], 1, strategy, W)


def test_more_gpus_than_layers_or_heads_become_replicas():
    from pipedecode.models import model_shape

    m8b = model_shape("llama-3-8b")
    assert replica_size(m8b, "tdpipe", 64) == (2, 32)
    assert replica_size(m8b, "tensor", 64) == (2, 32)
    assert replica_size(model_shape("llama-3-70b"), "pipeline", 64) == (1, 64)
    with pytest.raises(ValueError, match="unknown strategy 'dp'"):
        replica_size(m8b, "dp", 2)


@pytest.mark.parametrize("strategy", ["tdpipe", "pipeline", "tensor"])
def test_a_point_accounts_for_every_request_and_token(strategy):
    p = simulate_point("llama-3-8b", H200, LINKS["nvlink4"], 2, strategy, W)
    assert p.requests == 48 and p.output_tokens == W.output_tokens
    assert p.prompt_tokens == W.prompt_tokens and p.gpus == 2
    assert p.output_tokens_per_s == pytest.approx(W.output_tokens / p.makespan_s)
    assert p.total_tokens_per_s == pytest.approx((W.output_tokens + W.prompt_tokens) /
                                                 p.makespan_s)
    assert 0 <= p.bubble_fraction < 1
    assert p.num_slots == (1 if strategy == "tensor" else 2)
    assert p.stage_layers == (() if strategy == "tensor" else (17, 15))   # the head is costly


def test_replicas_split_the_requests_and_run_side_by_side():
    # Llama-3-8B on 64 GPUs: two pipelines of 32 stages, each with every other request
    p = simulate_point("llama-3-8b", H200, LINKS["nvlink4"], 64, "pipeline", W)
    halves = [simulate_point("llama-3-8b", H200, LINKS["nvlink4"], 32, "pipeline",
                             W.requests(r, 2)) for r in (0, 1)]
    assert (p.replicas, p.per_replica, p.requests) == (2, 32, 48)
    assert p.makespan_s == max(h.makespan_s for h in halves)
    assert p.output_tokens == sum(h.output_tokens for h in halves) == W.output_tokens
    assert p.batches == sum(h.batches for h in halves)


def test_a_loaded_phase_is_reported_only_when_requests_waited_for_seats():
    crowded = simulate_point("llama-3-8b", H200, LINKS["pcie5"], 1, "pipeline",
                             sharegpt_shaped(64, seed=1), SimOptions(seqs_per_gpu=8))
    assert crowded.loaded_output_tokens_per_s is not None
    roomy = simulate_point("llama-3-8b", H200, LINKS["pcie5"], 1, "pipeline",
                           sharegpt_shaped(64, seed=1))
    assert roomy.loaded_output_tokens_per_s is None      # 64 requests, 256 seats


def test_a_given_kv_pool_replaces_the_one_memory_holds():
    p = simulate_point("llama-3-8b", H200, LINKS["pcie5"], 1, "tdpipe", W,
                       SimOptions(kv_blocks=100))
    assert p.kv_blocks == 100
    with pytest.raises(ValueError, match="kv_blocks must be positive"):
        SimOptions(kv_blocks=0)


def test_on_one_gpu_the_phases_add_up_to_the_makespan_and_the_engines_terms_cost_time():
    full = simulate_point("llama-3-8b", H200, LINKS["pcie5"], 1, "pipeline", W)
    assert full.prefill_s + full.decode_s + full.untimed_host_s == \
        pytest.approx(full.makespan_s, rel=1e-9)
    assert full.decode_tokens == W.output_tokens - W.num_requests     # prefill gives one each
    assert full.mean_decode_batch == pytest.approx(full.decode_tokens / full.decode_steps)
    gpu_only = simulate_point("llama-3-8b", H200, LINKS["pcie5"], 1, "pipeline", W,
                              SimOptions(host_factor=0.0, padding=False, sampling=False))
    assert gpu_only.untimed_host_s == 0.0 and gpu_only.decode_steps == full.decode_steps
    assert gpu_only.makespan_s < full.makespan_s
    assert full.to_dict()["mean_decode_batch"] == full.mean_decode_batch
    with pytest.raises(ValueError, match="host_factor must be a number >= 0"):
        SimOptions(host_factor=-0.5)
