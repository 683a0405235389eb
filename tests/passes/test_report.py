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
        (1, "tiny-llama", 64, 16)
    layer0 = [s for s in data["stages"] if s["layer"] == 0]
    assert [s["bound"] for s in layer0] == ["compute", "memory", "compute"]
    for stage in data["stages"]:
        assert stage["flops"] == sum(n["flops"] for n in stage["nodes"])
        assert stage["bytes_moved"] == sum(n["bytes_moved"] for n in stage["nodes"])
    assert data["total_flops"] == sum(s["flops"] for s in data["stages"])
    q = [n for s in layer0 for n in s["nodes"] if n["module"] == "self_attn.q_proj"][0]
    assert q["flops"] == 2 * 64 * 64 * 64 and q["bound"] == "compute"


def test_table_lists_layers_stages_and_anchor_nodes(report):
    text = format_table(report)
    assert "-- layer.0" in text and "-- layer.1" in text and "-- epilogue" in text
    assert "self_attn.q_proj" in text and "attention" in text and "kv_write" in text
    assert "layout" not in text                      # free views hidden by default
    assert "layout" in format_table(report, all_nodes=True)


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


def test_analyze_reports_progress_in_order(low_ridge):
    from pipedecode.passes.report import analyze_model

    steps = []
    analyze_model("tiny-llama", low_ridge, batch_size=2, context_len=8, progress=steps.append)
    assert steps == ["build", "capture", "classify", "partition"]
