import pytest

from pipedecode.models import model_shape
from pipedecode.planner.cost import CostModel
from pipedecode.profiles import load_profile
from pipedecode.sim.engine_costs import PREFILL_LAUNCH_US_PER_LAYER, EngineCosts
from pipedecode.sim.executors import MemoCostModel, StagePipeline, TensorParallel
from pipedecode.sim.layout import pipeline_layout, tensor_layout
from pipedecode.sim.links import Link, ring_allreduce_us, transfer_us

from tests.sim.helpers import batch

H200 = load_profile("h200")
M8B = model_shape("llama-3-8b")
COST = CostModel(M8B, H200)
LINK = Link("test", bytes_per_s=1e10, peak_bytes_per_s=1e10, latency_us=2.0, source="test")


def _pipeline(stages: int) -> StagePipeline:
    return StagePipeline(pipeline_layout(M8B, H200, stages, layer_us=1.0, head_us=0.0), COST,
                         LINK)


def test_one_stage_prices_exactly_as_the_one_gpu_cost_model():
    pipe = _pipeline(1)
    decode, prefill = batch("decode", [100, 300, 50]), batch("prefill", [100, 300, 50])
    assert pipe.num_servers == 1
    assert pipe.service(decode).servers_us[0] == COST.sequential_step_us(3, 450)
    assert pipe.service(prefill).servers_us[0] == COST.prefill_us([100, 300, 50])
    assert pipe.service(decode).compute_us == COST.sequential_step_us(3, 450)


def test_stages_share_the_layers_the_last_adds_the_head_and_links_carry_activations():
    pipe = _pipeline(2)                                  # 16 + 16 layers
    b = batch("decode", [100, 300, 50])
    service = pipe.service(b)
    layer, head = COST.sequential_layer_us(3, 450), COST.head_us(3)
    compute, links = service.servers_us[0::2], service.servers_us[1::2]
    assert compute == pytest.approx([16 * layer, 16 * layer + head])
    assert compute.sum() == pytest.approx(COST.sequential_step_us(3, 450))
    # [hidden, residual] of 3 tokens in bf16 to stage 1; 3 int64 token ids back
    assert links == pytest.approx([transfer_us(LINK, 3 * 2 * 4096 * 2), transfer_us(LINK, 24)])
    prefill = pipe.service(batch("prefill", [100, 300]))
    assert prefill.servers_us[1] == pytest.approx(2.0 + 400 * 2 * 4096 * 2 / 1e10 * 1e6)
    assert prefill.compute_us == pytest.approx(COST.prefill_us([100, 300]))


def test_tensor_parallel_divides_the_step_and_adds_two_allreduces_per_layer():
    tp = TensorParallel(tensor_layout(M8B, H200, 4), COST, LINK)
    b = batch("decode", [100, 300, 50])
    # each all-reduce: 3 tokens x 4096 x 2 bytes over 4 GPUs: 6 steps of 6144 bytes
    allreduce = 6 * 6144 / 1e10 * 1e6 + 6 * 2.0
    assert ring_allreduce_us(LINK, 3 * 4096 * 2, 4) == pytest.approx(allreduce)
    expected = COST.sequential_step_us(3, 450) / 4 + 32 * 2 * allreduce
    service = tp.service(b)
    assert service.servers_us[0] == pytest.approx(expected)
    assert service.compute_us == pytest.approx(COST.sequential_step_us(3, 450))
    one = TensorParallel(tensor_layout(M8B, H200, 1), COST, LINK)
    assert one.service(b).servers_us[0] == COST.sequential_step_us(3, 450)


def test_the_remembering_cost_model_answers_as_the_cost_model():
    memo = MemoCostModel(M8B, H200)
    for tokens, kv in ((1, 100), (37, 9000), (256, 100000), (37, 9000)):
        assert memo.sequential_step_us(tokens, kv) == COST.sequential_step_us(tokens, kv)
        assert memo.prefill_us([tokens, 2 * tokens]) == COST.prefill_us([tokens, 2 * tokens])


def test_with_the_engines_costs_a_decode_runs_its_bucket_and_pays_the_sampling():
    engine = EngineCosts(max_num_seqs=1024)
    pipe = StagePipeline(pipeline_layout(M8B, H200, 1, layer_us=1.0, head_us=0.0), COST, LINK,
                         engine)
    decode = batch("decode", [100, 300, 50])                  # 3 rows run as a bucket of 4
    expected = COST.sequential_step_us(4, 451) + engine.sampling_us(COST, 4)
    assert pipe.service(decode).servers_us[0] == pytest.approx(expected)
    assert expected > COST.sequential_step_us(3, 450)
    prefill = batch("prefill", [100, 300, 50])                 # 3 logits rows, from a graph
    assert pipe.service(prefill).servers_us[0] == \
        pytest.approx(engine.prefill_us(COST, [100, 300, 50]) + engine.sampling_us(COST, 3))
    big = batch("prefill", [2048] * 4)                         # eager; the GPU's is the longer
    assert pipe.service(big).servers_us[0] == \
        pytest.approx(COST.prefill_us([2048] * 4) + engine.sampling_us(COST, 4))
    assert COST.prefill_us([2048] * 4) > 32 * PREFILL_LAUNCH_US_PER_LAYER
    two = StagePipeline(pipeline_layout(M8B, H200, 2, layer_us=1.0, head_us=0.0), COST, LINK,
                        engine)                                # a stage prefills eagerly
    # the eager floor of the whole model, its layers' share (the head is the last stage's)
    launches = (32 * PREFILL_LAUNCH_US_PER_LAYER - COST.head_us(3)) / 2
    assert two.service(prefill).servers_us[0] == pytest.approx(launches)
    assert engine.prefill_us(COST, [100, 300, 50]) < 2 * launches


def test_a_pipelines_last_stage_samples_and_its_links_carry_the_padded_rows():
    engine = EngineCosts(max_num_seqs=1024)
    pipe = StagePipeline(pipeline_layout(M8B, H200, 2, layer_us=1.0, head_us=0.0), COST, LINK,
                         engine)
    service = pipe.service(batch("decode", [100, 300, 50]))
    layer = COST.sequential_layer_us(4, 451)
    head = COST.head_us(4) + engine.sampling_us(COST, 4)
    assert service.servers_us[0::2] == pytest.approx([16 * layer, 16 * layer + head])
    assert service.servers_us[1] == pytest.approx(transfer_us(LINK, 4 * 2 * 4096 * 2))
    assert service.servers_us[3] == pytest.approx(transfer_us(LINK, 3 * 8))   # 3 token ids
