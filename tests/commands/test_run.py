import json

import pytest
import torch

from pipedecode.cli import main
from pipedecode.commands import run
from pipedecode.errors import PipedecodeError


def test_run_checks_every_stage_against_eager(capsys, tmp_path):
    out = tmp_path / "schedule.json"
    code = main(["run", "--batch", "3", "--prompt-len", "6", "--new-tokens", "4", "--seed", "1",
                 "--plan-out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert text.splitlines()[0].startswith("pipedecode run: tiny-llama (random weights, seed 1;")
    assert "profile h100 (measured profile)" in text.splitlines()[0]
    assert "[3/4] engine: 3 ragged requests (1 with stop ids, 1 stopped by one) through LLM " \
           "(temporal policy, paged KV cache of 3 blocks" in text
    assert "identical to transformers generate (3 of 3)" in text
    assert text.count("identical to transformers eager") == 1 and "DIFFER" not in text
    assert "[2/4] planned" in text and "(measured profile)" in text.splitlines()[2]
    assert json.loads(out.read_text())["model"]["name"] == "tiny-llama"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Qwen2 with its own weights saved (seed 7), and the tokens transformers makes."""
    from pipedecode.models import build_model

    path = tmp_path_factory.mktemp("ckpt")
    model = build_model("tiny-qwen2", seed=7)
    model.save_pretrained(path)
    prompts = run._prompts(2, 6, model.config.vocab_size, seed=0)
    return path, run._eager_tokens(model, prompts, 3)[0].tolist()


def test_a_directory_runs_on_its_own_weights(checkpoint, capsys):
    path, first = checkpoint
    assert main(["run", "--model", str(path), "--batch", "2", "--prompt-len", "6",
                 "--new-tokens", "3"]) == 0
    text = capsys.readouterr().out
    assert f"(weights from {path};" in text.splitlines()[0]
    assert f"first request: {first}" in text          # the saved model's own tokens


def test_random_weights_are_asked_for_and_said(checkpoint, capsys):
    path, first = checkpoint
    assert main(["run", "--model", str(path), "--random-weights", "--batch", "2",
                 "--prompt-len", "6", "--new-tokens", "3"]) == 0
    text = capsys.readouterr().out
    assert "(random weights, seed 0;" in text.splitlines()[0]
    assert f"first request: {first}" not in text


def test_a_model_too_large_is_refused_before_anything_is_built(monkeypatch, capsys):
    from pipedecode import models

    monkeypatch.setattr(models, "free_memory_bytes", lambda device: (24 << 30, "available RAM"))
    monkeypatch.setattr(models, "build_model", pytest.fail)        # never reached
    monkeypatch.setattr(run, "_analyze_and_plan", pytest.fail)
    assert main(["run", "--model", "llama-3-8b"]) == 2
    err = capsys.readouterr().err.strip()
    # float32 on the CPU: 29.9 GiB of weights and 17.0 GiB of fused q/k/v and gate/up copies
    assert "29.9 GiB of weights, 17.0 GiB of fused copies" in err
    assert "47.0 GiB needed on cpu, but only 24.0 GiB is available RAM" in err
    assert len(err.splitlines()) == 1


def test_a_large_model_that_fits_says_how_long_it_will_take(monkeypatch, capsys):
    from pipedecode import models

    monkeypatch.setattr(models, "free_memory_bytes", lambda device: (1 << 40, "available RAM"))
    monkeypatch.setattr(run, "_probe_seconds_per_byte", lambda device, dtype: (1e-9, 1e-10))

    def stop(*args):
        raise PipedecodeError("stopped before the work")

    monkeypatch.setattr(run, "_analyze_and_plan", stop)
    assert main(["run", "--model", "llama-3-8b"]) == 2
    out = capsys.readouterr().out
    # 32.1e9 bytes x (1e-9 to fill + 80 forwards x 1e-10 to read) = 289 s
    assert "29.9 GiB of float32 weights on cpu: expect roughly 5 min" in out
    assert run.expected_seconds(models.model_shape("tiny-llama"), "cpu", 4, 8) is None


def test_the_probe_measures_positive_rates():
    fill, read = run._probe_seconds_per_byte("cpu", torch.float32)
    assert 0 < fill < 1e-6 and 0 < read < 1e-6


def test_run_bytes_counts_weights_fused_copies_and_two_caches():
    from pipedecode.models import model_shape

    shape = model_shape("tiny-llama")          # bf16: qkv 128 x 64, gate_up 320 x 64, 2 layers
    parts = run.run_bytes(shape, batch=3, max_context=10)
    assert parts["fused copies"] == 2 * (128 * 64 + 320 * 64) * 2
    assert parts["KV caches"] == 2 * 3 * 10 * shape.kv_bytes_per_token()
    assert parts["weights"] == shape.weight_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch must be positive"),
    (["--new-tokens", "-1"], "--new-tokens must be positive"),
    (["--prompt-len", "600"], "608 positions, beyond the 512 of tiny-llama"),
    (["--model", "llama-3-8b", "--batch", "100000000"], "GiB of KV caches"),
    (["--model", "NO_WEIGHTS"], "holds no weights (*.safetensors or pytorch_model*.bin); pass "
                                "--random-weights"),
    (["--model", "BAD_CONFIG"], "not a multiple of the number of attention heads"),
])
def test_bad_input_is_one_line_exit_2_and_no_schedule(argv, message, capsys, tmp_path):
    from pipedecode.models import make_config

    make_config("tiny-llama").save_pretrained(tmp_path / "no_weights")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 100, "num_attention_heads": 3, '
        '"intermediate_size": 200, "num_hidden_layers": 2, "vocab_size": 256}')
    argv = [{"NO_WEIGHTS": str(tmp_path / "no_weights"),
             "BAD_CONFIG": str(tmp_path / "bad")}.get(a, a) for a in argv]
    out = tmp_path / "schedule.json"
    assert main(["run", *argv, "--plan-out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "no_weights"]


def test_no_schedule_is_written_when_the_tokens_differ(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(run, "_execute", lambda *args: False)
    out = tmp_path / "schedule.json"
    assert main(["run", "--batch", "2", "--new-tokens", "2", "--plan-out", str(out)]) == 1
    assert list(tmp_path.iterdir()) == []
