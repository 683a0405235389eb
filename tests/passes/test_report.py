"""The analysis report: its JSON form and the text table."""

import json

import pytest

from pipedecode.passes.report import analyze_model, format_table


@pytest.fixture(scope="module")
def report():
    from pipedecode.profiles.schema import DeviceProfile

    device = DeviceProfile("ridge-1", 132, 8, 8, peak_flops_per_s=1e12, hbm_bytes_per_s=1e12,
                           memory_bytes=1 << 30)
    return analyze_model("tiny-llama", device, batch_size=64, context_len=16, dtype="float32")


def test_report_is_versioned_json_with_stage_and_node_costs(report):
    data = json.loads(json.dumps(report))
    assert (data["version"], data["model"], data["batch_size"], data["context_len"]) == \
        (2, "tiny-llama", 64, 16)
    layer0 = [s for s in data["stages"] if s["layer"] == 0]
    assert [s["bound"] for s in layer0] == ["compute", "memory", "compute"]
    for stage in data["stages"]:
        assert stage["flops"] == sum(n["flops"] for n in stage["nodes"])
        assert stage["bytes_moved"] == sum(n["bytes_moved"] for n in stage["nodes"])
    assert data["total_flops"] == sum(s["flops"] for s in data["stages"])
    q = [n for s in layer0 for n in s["nodes"]
         if n["module"] == "model.layers.0.self_attn.q_proj"][0]
    assert q["flops"] == 2 * 64 * 64 * 64 and q["bound"] == "compute"
    assert {n["module"] for s in data["stages"] for n in s["nodes"]} >= \
        {"model.embed_tokens", "model.layers.1.mlp.down_proj", "model.norm", "lm_head"}


def test_layers_alike_form_one_kind_with_the_stages_of_one_layer(report):
    (kind,) = report["layer_kinds"]
    assert kind["layers"] == [0, 1]
    layer0 = [s for s in report["stages"] if s["layer"] == 0]
    assert [s["flops"] for s in kind["stages"]] == [s["flops"] for s in layer0]
    assert kind["stages"][0]["ops"][:2] == ["input_layernorm", "self_attn.q_proj"]
    assert kind["stages"][1]["ops"] == ["kv_write", "attention"]
    assert "mlp.down_proj" in kind["stages"][2]["ops"]


def test_layers_that_differ_are_kinds_of_their_own():
    from pipedecode.passes.report import layer_kinds

    def stage(layer, flops):
        return {"layer": layer, "bound": "memory", "flops": flops, "bytes_moved": 1,
                "intensity_flops_per_byte": flops, "ops": ["attention"]}

    kinds = layer_kinds([stage(0, 5), stage(1, 5), stage(2, 7), stage(None, 1)])
    assert [k["layers"] for k in kinds] == [[0, 1], [2]]


def test_summary_by_default_nodes_on_request(report):
    text = format_table(report)
    assert "decoder layer, layers 0-1 (2 alike), per layer:" in text
    assert "before the layers" in text and "after the layers (the head" in text
    assert "kv_write, attention" in text and "model.norm, lm_head" in text
    assert "-- layer.0" not in text and "linear_1" not in text       # no node list
    nodes = format_table(report, nodes=True)
    assert "-- layer.0" in nodes and "model.layers.1.self_attn.q_proj" in nodes
    assert "L['" not in nodes and "L__self" not in nodes              # no Dynamo sources
    assert "layout" not in nodes                    # free views hidden unless all_nodes
    assert "layout" in format_table(report, all_nodes=True)


@pytest.mark.parametrize("source", ["L['self'].model.layers[0].self_attn.q_proj",
                                    "L['args'][0].model.layers.0.self_attn.q_proj",
                                    "L['self']._modules['model']._modules['layers']"
                                    "._modules['0']._modules['self_attn']._modules['q_proj']"])
def test_module_names_are_the_models_own_whatever_dynamo_calls_the_root(source):
    import torch.fx

    from pipedecode.passes.report import module_name

    graph = torch.fx.Graph()
    node = graph.placeholder("x")
    node.meta["nn_module_stack"] = {"k": (source, torch.nn.Linear)}
    names = frozenset({"", "model", "model.layers.0", "model.layers.0.self_attn",
                       "model.layers.0.self_attn.q_proj"})
    assert module_name(node, names) == "model.layers.0.self_attn.q_proj"


def test_bad_dtype_or_phase_is_rejected(report):
    from pipedecode.profiles.schema import DeviceProfile

    device = DeviceProfile("h", 132, 8, 8, 800e12, 3e12, 80 << 30)
    with pytest.raises(ValueError, match="dtype"):
        analyze_model("tiny-llama", device, batch_size=1, context_len=8, dtype="int8")
    with pytest.raises(ValueError, match="phase"):
        analyze_model("tiny-llama", device, batch_size=1, context_len=8, phase="train")


@pytest.mark.parametrize("batch,bounds", [(1, ["memory"]), (512, ["compute", "memory", "compute"])])
def test_real_shapes_are_analyzed_without_weights(batch, bounds):
    from pipedecode.models import make_config
    from pipedecode.profiles.schema import DeviceProfile

    device = DeviceProfile("h", 132, 8, 8, 800e12, 3e12, 80 << 30)   # ridge 266.7 FLOP/B
    config = make_config("llama-3-8b", num_hidden_layers=1)
    data = analyze_model(config, device, batch_size=batch, context_len=2048)
    assert [s["bound"] for s in data["stages"] if s["layer"] == 0] == bounds
    attn = [n for s in data["stages"] for n in s["nodes"] if n["role"] == "attention"][0]
    # bf16 K and V of 8 kv heads x 128 over 2048 live tokens dominate the attention bytes
    assert attn["bytes_moved"] >= 2 * batch * 8 * 2048 * 128 * 2
    assert attn["bytes_moved"] < 1.01 * 2 * batch * 8 * 2048 * 128 * 2


def test_steps_that_cannot_fit_the_device_or_the_positions_are_refused():
    from pipedecode.errors import WorkloadError
    from pipedecode.profiles.schema import DeviceProfile

    device = DeviceProfile("h", 132, 8, 8, 800e12, 3e12, 80 << 30)
    # Llama-3-8B bf16: 128 KiB of KV per token; 1e8 sequences of 1024 tokens are 12 PiB
    with pytest.raises(WorkloadError, match="at most 640 sequences fit"):
        analyze_model("llama-3-8b", device, batch_size=10 ** 8, context_len=1024)
    with pytest.raises(WorkloadError, match="beyond the 8192 of llama-3-8b"):
        analyze_model("llama-3-8b", device, batch_size=1, context_len=9000)


def test_analyze_reports_progress_in_order(low_ridge):
    from pipedecode.passes.report import analyze_model

    steps = []
    analyze_model("tiny-llama", low_ridge, batch_size=2, context_len=8, progress=steps.append)
    assert steps == ["build", "capture", "classify", "partition"]
