import json

from pipedecode.cli import main


def test_run_checks_every_stage_against_eager(capsys, tmp_path):
    out = tmp_path / "schedule.json"
    code = main(["run", "--batch", "3", "--prompt-len", "6", "--new-tokens", "4", "--seed", "1",
                 "--plan-out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert text.count("identical to transformers eager") == 2
    assert "[2/4] planned" in text
    assert json.loads(out.read_text())["model"]["name"] == "tiny-llama"


def test_run_rejects_zero_batch(capsys):
    assert main(["run", "--batch", "0"]) == 2
    err = capsys.readouterr().err
    assert "--batch must be positive" in err and "Traceback" not in err
