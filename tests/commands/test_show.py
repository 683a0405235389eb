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
