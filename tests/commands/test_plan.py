import json
import shutil
import subprocess
import sys

import pytest

from pipedecode.cli import main
from pipedecode.commands.plan import lengths
from pipedecode.errors import PlanningError
from pipedecode.planner import load_schedule


def test_plan_writes_a_schedule_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "s.json"
    rc = main(["plan", "--model", "llama-3-8b", "--device", "nvidia-h200", "--batch", "256",
               "--context", "uniform:256:2048", "--waiting", "32", "--out", str(out)])
    assert rc == 0
    schedule = load_schedule(out, model="llama-3-8b")
    assert schedule.num_requests == 256 and schedule.device.startswith("h200")
    assert schedule.switch is not None
    text = capsys.readouterr().out
    assert "predicted step" in text and "switch to prefill" in text and str(out) in text
    assert "planned in" in text


def test_context_file_and_seeded_distributions(tmp_path):
    path = tmp_path / "lens.txt"
    path.write_text("100\n200\n300\n")
    assert lengths(str(path), None, __import__("random").Random(0), "--context") == [100, 200, 300]
    path.write_text("[5, 6]")
    assert lengths(str(path), 2, __import__("random").Random(0), "--context") == [5, 6]
    rng = lambda: __import__("random").Random(4)  # noqa: E731
    a = lengths("normal:1000:100", 50, rng(), "--context")
    assert a == lengths("normal:1000:100", 50, rng(), "--context") and len(set(a)) > 1
    assert all(256 <= x <= 512 for x in lengths("uniform:256:512", 50, rng(), "--context"))
    assert lengths("64", 3, rng(), "--context") == [64, 64, 64]
    with pytest.raises(PlanningError, match="lists 2 lengths but --batch is 3"):
        lengths(str(path), 3, rng(), "--context")


BAD_CONFIG = ('{"model_type": "llama", "hidden_size": 100, "num_attention_heads": 3, '
              '"num_key_value_heads": 3, "intermediate_size": 200, "num_hidden_layers": 2, '
              '"vocab_size": 256}')


@pytest.mark.parametrize("args, message", [
    (["--context", "uniform:9:1"], "cannot read 'uniform:9:1'"),
    (["--context", "-5"], "must be positive"),
    (["--device", "h900"], "unknown device profile 'h900'"),
    (["--model", "gpt-9"], "Llama-family"),
    (["--batch", "4096", "--context", "4096"], "does not fit"),
    (["--waiting", "lots"], "neither a count nor a file"),
    (["--micro-batches", "1"], "num_micro_batches must be >= 2"),
    (["--micro-batches", "100000"], "at most 16"),
    # weights beyond the GPU: the reason, and the way out
    (["--model", "llama-3-70b"], "131.4 GiB of weights (llama-3-70b) exceed the 79.2 GiB of one "
                                 "h100"),
    (["--model", "llama-3-70b", "--device", "h200"], "--pipeline-parallel 2"),
    (["--kv-budget-gib", "100"], "the budget can be at most 64.2 GiB"),
    (["--kv-budget-gib", "nan"], "--kv-budget-gib must be a positive number"),
    (["--kv-budget-gib", "-2"], "--kv-budget-gib must be a positive number"),
    # sizes bounded before a list of that length is made
    (["--batch", "100000000"], "at most 461,240 fit the 56.3 GiB left for the KV cache"),
    (["--batch", "1000000000000"], "a --batch of 1,000,000,000,000 requests cannot fit h100"),
    (["--waiting", "100000000000"], "a --waiting queue of 100,000,000,000 requests"),
    (["--waiting", "4", "--remaining", "uniform:1:1000000000000"], "beyond the 8192 of"),
    (["--context", "9000"], "9001 positions, beyond the 8192 of llama-3-8b"),
    (["--switch-cost-us", "nan"], "--switch-cost-us must be a finite number"),
    (["--horizon", "0"], "--horizon must be positive"),
    (["--model", "BAD_CONFIG"], "not a multiple of the number of attention heads"),
])
def test_bad_arguments_give_one_line_exit_2_and_no_file(tmp_path, capsys, args, message):
    out = tmp_path / "s.json"
    base = {"--model": "llama-3-8b", "--device": "h100", "--batch": "8", "--context": "512",
            "--out": str(out)}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value
    if base["--model"] == "BAD_CONFIG":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "config.json").write_text(BAD_CONFIG)
        base["--model"] = str(tmp_path / "bad")
    argv = ["plan"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert err.startswith("pipedecode plan: error:")
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.is_file()] == []


def test_a_failed_plan_keeps_the_previous_file(tmp_path, capsys):
    out = tmp_path / "s.json"
    out.write_text("previous")
    assert main(["plan", "--model", "llama-3-70b", "--device", "h100", "--context", "512",
                 "--out", str(out)]) == 2
    assert out.read_text() == "previous" and sorted(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("device, source", [("a100", "(analytic profile, never measured)"),
                                            ("h100", "(measured profile)")])
def test_predictions_say_whether_the_profile_was_measured(tmp_path, capsys, device, source):
    assert main(["plan", "--model", "llama-3-8b", "--device", device, "--batch", "256",
                 "--context", "1024", "--out", str(tmp_path / "s.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    predicted = [line for line in lines if "predicted step" in line]
    assert len(predicted) == 1 and predicted[0].endswith(source)
    assert "faster than sequential" in predicted[0]
    (why,) = [line for line in lines if line.startswith("  why: ")]
    assert why.startswith("  why: sequential: predicted")      # 128-request micro-batches


def test_the_installed_script_runs_plan(tmp_path):
    exe = shutil.which("pipedecode")
    cmd = [exe] if exe else [sys.executable, "-m", "pipedecode.cli"]
    out = tmp_path / "s.json"
    args = ["plan", "--model", "llama-3-8b", "--device", "h100", "--batch", "64", "--context",
            "1024", "--solver", "ortools", "--out", str(out)]
    done = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["solver"] == "ortools"


def test_model_directory_and_profile_file(tmp_path, capsys):
    from pipedecode.models import make_config
    from pipedecode.profiles.analytic import BUILTIN

    make_config("tiny-qwen2").save_pretrained(tmp_path / "model")
    profile = tmp_path / "mine.json"
    profile.write_text(BUILTIN["a100"].to_json())
    out = tmp_path / "s.json"
    assert main(["plan", "--model", str(tmp_path / "model"), "--device", str(profile),
                 "--batch", "4", "--context", "32", "--out", str(out)]) == 0
    schedule = load_schedule(out, model="tiny-qwen2")
    assert schedule.device == "a100" and schedule.model.qkv_bias
