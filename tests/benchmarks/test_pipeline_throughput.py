"""The pipeline benchmark's pure parts on the CPU: its arguments, requests, the simulator's
prediction beside each cell, the measured cell and the table."""

import pytest

import pipeline_throughput as bench
from pipedecode.engine.stats import GenerateStats
from pipedecode.profiles.registry import resolve_profile
from pipedecode.sim.workloads import sharegpt_shaped


class _Output:
    def __init__(self, n):
        self.outputs = [type("Completion", (), {"token_ids": tuple(range(n))})()]


def test_arguments_default_to_both_policies_and_refuse_others():
    args = bench.parse_args([])
    assert args.policies == ["temporal", "prefill-first"] and args.model == "llama-3-8b"
    assert bench.parse_args(["--policies", "prefill-first"]).policies == ["prefill-first"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--policies", "fifo"])


@pytest.mark.parametrize("predictor, ignore_eos", [("online", False), ("oracle", True)])
def test_requests_are_the_workloads(predictor, ignore_eos):
    workload = sharegpt_shaped(20, seed=3)
    prompts, params = bench.requests(workload, 1000, predictor)
    assert [len(p) for p in prompts] == list(workload.prompt_lens)
    assert [p.max_tokens for p in params] == list(workload.output_lens)
    assert all(p.ignore_eos is ignore_eos and p.temperature == 0 for p in params)


def test_the_warm_up_sweeps_every_micro_batch_size():
    from pipedecode.engine.block_manager import BlockManager
    from pipedecode.engine.policies import make_policy
    from pipedecode.engine.scheduler import Scheduler, SchedulerConfig
    from pipedecode.engine.sequence import Sequence

    prompts, params = bench.warmup_requests(32, 4, 1000)
    assert len({tuple(p) for p in prompts}) == 32 and {len(p) for p in prompts} == {16}
    sched = Scheduler(SchedulerConfig(512, 32, 8192, num_slots=4), BlockManager(200, 16),
                      make_policy("prefill-first"))
    for i, (p, sp) in enumerate(zip(prompts, params)):
        sched.add(Sequence(i, p, sp))
    sizes, in_flight = set(), []
    while sched.has_unfinished():          # four micro-batches in flight, as on 4 stages
        while len(in_flight) < 4 and (batch := sched.schedule()) is not None:
            in_flight.append(batch)
        batch = in_flight.pop(0)
        if batch.kind == "decode":
            sizes.add(len(batch.seqs))
        sched.postprocess(batch, [7] * len(batch.seqs))
    assert sizes == set(range(1, 9))       # every size up to 32 / 4


def test_each_cell_gets_the_simulators_prediction_for_its_strategy():
    workload = sharegpt_shaped(300, seed=0)         # more than the pool of 1000 blocks holds
    h200 = resolve_profile("h200")
    temporal = bench.simulated("llama-3-8b", h200, "nvlink4", 2, "temporal", workload, 256,
                               1000, "online")
    plain = bench.simulated("llama-3-8b", h200, "nvlink4", 2, "prefill-first", workload, 256,
                            1000, "online")
    assert temporal["output_tokens_per_s"] > 0 and plain["output_tokens_per_s"] > 0
    assert temporal["max_num_seqs"] == 256 and sum(temporal["stage_layers"]) == 32
    assert 0 < temporal["switches"] < plain["switches"]     # phases, not interleaved prefills
    refused = bench.simulated("llama-3-70b", h200, "nvlink4", 1, "temporal", workload, 256,
                              20000, "online")
    assert "InsufficientMemoryError" in refused["error"]       # 70B does not fit one GPU


def test_a_cell_and_the_table():
    workload = sharegpt_shaped(4, seed=0)
    stats = GenerateStats(4, 100, 50, 100, 46, 1.0, 2.0, 3.0, 2, 30, 100, "temporal")
    outputs = [_Output(n) for n in workload.output_lens]
    outputs[1] = _Output(workload.output_lens[1] - 1)
    row = bench.cell("temporal", stats, 2.5, outputs, workload)
    assert row["output_tokens_per_s"] == 20.0 and row["total_tokens_per_s"] == 60.0
    assert row["ended_early"] == 1 and row["peak_kv"] == 0.3
    other = dict(row, policy="prefill-first", output_tokens_per_s=10.0,
                 simulated={"error": "InsufficientMemoryError: no room"})
    row["simulated"] = {"output_tokens_per_s": 30.0}
    result = dict(gpu="NVIDIA H200", gpu_key="h200", date="d", commit="c", model="llama-3-8b",
                  gpus=2, predictor="online", link="nvlink4", interleave=False,
                  stage_layers=[17, 15],
                  kv_blocks=1000, block_size=16, max_num_seqs=256, warmup_s=4.0,
                  workload=workload.summary(), cells=[row, other])
    text = bench.markdown(result)
    assert text.startswith("# Pipeline throughput, llama-3-8b on 2 GPUs: NVIDIA H200")
    assert "| temporal | 20 | 60 | 2.5 | 2 | 30% | 1 | 30 | 1.50 |" in text
    assert "| prefill-first | 10 |" in text and "InsufficientMemoryError: no room" in text
    assert "temporal / prefill-first: 2.00x" in text
