import json

import pytest

from pipedecode.cli import main


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("show") / "s.json"
    assert main(["plan", "--model", "llama-3-8b", "--device", "h200", "--batch", "256",
                 "--context", "uniform:256:2048", "--waiting", "16", "--out", str(out)]) == 0
    return out


def test_show_prints_tables_and_draws(schedule_file, tmp_path, capsys):
    png, trace = tmp_path / "t.png", tmp_path / "t.json"
    assert main(["show", str(schedule_file), "--png", str(png), "--trace", str(trace)]) == 0
    text = capsys.readouterr().out
    assert "one decoder layer" in text and "micro-batch" in text and "TD-Pipe" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    events = json.loads(trace.read_text())["traceEvents"]
    assert sum(e["ph"] == "X" for e in events) > 32 * 3


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ('{"version": 7}', "'version'"),
])
def test_show_rejects_bad_files_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main(["show", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_show_missing_file(tmp_path, capsys):
    assert main(["show", str(tmp_path / "none.json")]) == 2
    assert "cannot read schedule" in capsys.readouterr().err


def test_predictions_of_an_analytic_profile_are_marked(tmp_path, capsys):
    out = tmp_path / "a100.json"
    assert main(["plan", "--model", "llama-3-8b", "--device", "a100", "--batch", "256",
                 "--context", "1024", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "on a100 (analytic profile, never measured)" in text.splitlines()[0]
    speed = [line for line in text.splitlines() if line.startswith("sequential step")]
    assert "faster than sequential (analytic profile, never measured)" in speed[0]


def test_measured_profile_is_marked_measured(schedule_file, capsys):
    assert main(["show", str(schedule_file)]) == 0
    assert "(measured profile)" in capsys.readouterr().out.splitlines()[0]


def test_one_bad_output_path_leaves_no_file_at_all(schedule_file, tmp_path, capsys):
    png = tmp_path / "t.png"
    assert main(["show", str(schedule_file), "--png", str(png),
                 "--trace", str(tmp_path / "missing" / "t.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_layer_count_is_refused_before_reading(schedule_file, capsys):
    assert main(["show", str(schedule_file), "--layers", "0"]) == 2
    assert "--layers must be positive" in capsys.readouterr().err


def test_show_draws_a_coresident_schedule_on_both_streams(tmp_path, capsys):
    import dataclasses

    from pipedecode.models import model_shape
    from pipedecode.planner.schedule import Schedule
    from pipedecode.runtime.program import manual_schedule

    base = manual_schedule(model_shape("llama-3-8b"), [512] * 4, [[0, 2], [1, 3]], 132, 132,
                           mode="coresident", attention_smem_bytes=65536, step_us=900.0)
    slots = tuple(dataclasses.replace(s, predicted_us=10.0) for s in base.slots)
    schedule = Schedule(**{**base.__dict__, "slots": slots, "phase_us": (12.0, 12.0),
                           "mode_reason": "coresident: predicted faster"})
    path, png = tmp_path / "co.json", tmp_path / "co.png"
    path.write_text(schedule.to_json())
    assert main(["show", str(path), "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "coresident, memory and compute streams on all 132 SMs, attention within 64 KiB" \
        in text.splitlines()[0]
    assert "why coresident: coresident: predicted faster" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
