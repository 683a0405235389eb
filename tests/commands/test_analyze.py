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
    assert "tiny-qwen2 decode step on h100" in text and "-- layer.1" in text
    assert "self_attn.o_proj" in text
    data = json.loads(out.read_text())
    assert data["version"] == 1 and data["batch_size"] == 4 and data["context_len"] == 32
    assert data["device"] == "h100" and data["num_layers"] == 2


def test_analyze_prefill_phase(capsys):
    assert main(["analyze", "--phase", "prefill", "--batch", "2", "--context", "16"]) == 0
    assert "tiny-llama prefill step on h100" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--batch", "0"], "batch must be a positive integer"),
    (["--context", "0"], "context must be a positive integer"),
    (["--model", "gpt2"], "Llama-family"),
    (["--device", "no-such-gpu"], "no-such-gpu"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    code = main(["analyze", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
