"""`pipedecode analyze` end to end through the CLI dispatcher."""

import json

import pytest
import torch

from pipedecode.cli import main


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_analyze_prints_per_layer_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "analysis.json"
    code = main(["analyze", "--model", "tiny-qwen2", "--device", "h100", "--batch", "4",
                 "--context", "32", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "tiny-qwen2 decode step on h100 (measured profile" in text
    assert "decoder layer, layers 0-1 (2 alike)" in text and "self_attn.o_proj" in text
    assert "-- layer.1" not in text                     # the node list only on request
    data = json.loads(out.read_text())
    assert data["version"] == 2 and data["batch_size"] == 4 and data["context_len"] == 32
    assert data["device"] == "h100" and data["num_layers"] == 2


def test_the_summary_does_not_grow_with_the_layers(tmp_path, capsys):
    from pipedecode.models import make_config

    make_config("tiny-llama", num_hidden_layers=6).save_pretrained(tmp_path / "deep")
    assert main(["analyze", "--model", "tiny-llama"]) == 0
    shallow = capsys.readouterr().out.splitlines()
    assert main(["analyze", "--model", str(tmp_path / "deep")]) == 0
    deep = capsys.readouterr().out.splitlines()
    assert "decoder layer, layers 0-5 (6 alike), per layer:" in deep
    assert len(deep) == len(shallow) < 25
    assert main(["analyze", "--model", str(tmp_path / "deep"), "--nodes"]) == 0
    nodes = capsys.readouterr().out
    assert "model.layers.5.mlp.down_proj" in nodes and "L['" not in nodes


def test_analyze_prefill_phase(capsys):
    assert main(["analyze", "--phase", "prefill", "--batch", "2", "--context", "16"]) == 0
    assert "tiny-llama prefill step on h100" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--batch", "0"], "batch must be a positive integer"),
    (["--context", "0"], "context must be a positive integer"),
    (["--model", "gpt2"], "Llama-family"),
    (["--device", "no-such-gpu"], "no-such-gpu"),
    (["--context", "600"], "600 positions, beyond the 512 of tiny-llama"),
    (["--model", "llama-3-8b", "--batch", "100000000"], "at most 633 sequences fit"),
    (["--model", "llama-3-8b", "--batch", "1000000000000"], "exceeds the 79.2 GiB of h100"),
])
def test_bad_input_is_one_line_exit_2_and_no_json(argv, message, capsys, tmp_path):
    out = tmp_path / "report.json"
    code = main(["analyze", *argv, "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
