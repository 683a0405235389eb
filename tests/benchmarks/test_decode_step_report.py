"""The decode-step benchmark's rendering and merging, from small JSON results (no GPU)."""

import json
import re

import decode_step_report as report
import pytest

RESULT = {"gpu": "NVIDIA H200", "gpu_key": "h200", "date": "2030-01-02T03:04+00:00",
          "commit": "abc1234", "torch": "2.13.0", "transformers": "5.24.0", "triton": "3.9.0",
          "profile": "h200", "peak_tflops": 690.0, "hbm_tbs": 4.40, "splits": [40, 48],
          "kernels": "hybrid",
          "rows": [{"model": "llama-3-8b", "batch": 64, "context": 512, "kv_tokens": 32768,
                    "name": "llama-3-8b_b64_c512", "roofline_floor_us": 4000.0,
                    "interleaved_floor_us": 8000.0, "op_floor_us": 8800.0,
                    "sequential_us": 10000.0, "planner_unguarded_us": 9000.0,
                    "planner_guarded_us": 9500.0, "planner_guard_kept": "coresident",
                    "planner_mode": "coresident", "planner_predicted_us": 9900.0,
                    "planner_reason": "coresident: predicted 9.90 ms, sequential 10.40 ms",
                    "coresident_best": "co64", "coresident_best_us": 8000.0,
                    "interleaved_best_split": "split48", "interleaved_best_split_us": 8500.0,
                    "hf_eager_us": 30000.0},
                   {"model": "llama-3-8b", "batch": 1000, "context": 700, "kv_tokens": 700000,
                    "name": "llama-3-8b_b1000_c700", "roofline_floor_us": 1.0,
                    "skipped": "weights + KV cache do not fit in GPU memory"},
                   {"model": "llama-2-7b", "batch": 96, "context": 300, "kv_tokens": 28800,
                    "name": "llama-2-7b_b96_c300", "roofline_floor_us": 3000.0,
                    "sequential_us": 6000.0}]}


def _cells(md: str, start: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_markdown_names_gpu_date_commit_and_nothing_of_runs():
    md = report.markdown(RESULT)
    head = md.splitlines()[:3]
    assert head[0] == "# Decode step: NVIDIA H200"
    assert "2030-01-02T03:04" in head[2] and "abc1234" in head[2]
    assert "session" not in md.lower() and not re.search(r"\brun \d", md.lower())


def test_a_measured_row_shows_times_ratios_and_floors():
    cells = _cells(report.markdown(RESULT), "| llama-3-8b | 64 |")
    assert cells[3:6] == ["30.00", "-", "10.00"]                 # HF eager, compile, sequential
    assert cells[6] == "88%"                                     # own floor 8.8 ms / 10 ms
    assert cells[7:10] == ["9.50 (co)", f"{10000 / 9500:.3f}", "9.00 (co)"]
    assert cells[10:13] == ["-", "8.00 (co64, 1.250x)", "8.50 (split48, 1.176x)"]
    assert cells[13] == "1.25"                                   # 10 ms / the 8 ms il floor
    assert cells[15] == f"{(9900 - 9000) / 9000:+.1%}"
    assert cells[16:] == ["4.00", f"{4000 / 8000:.2f}"]


def test_results_that_named_the_planner_times_before_still_render():
    old = dict(RESULT["rows"][0], planner_mode="interleaved")
    for key in ("planner_unguarded_us", "planner_guarded_us", "planner_guard_kept"):
        old.pop(key)
    old.update(planner_us=9000.0, planner_guard_us=9500.0)
    cells = _cells(report.markdown(dict(RESULT, rows=[old])), "| llama-3-8b | 64 |")
    assert cells[7:10] == ["9.50 (il)", f"{10000 / 9500:.3f}", "9.00 (il)"]


def test_the_markdown_reports_each_target_and_each_reason():
    md = report.markdown(RESULT)
    assert "## Targets (2 measured points)" in md
    assert "at the best point: 1.053x at llama-3-8b_b64_c512: **not met**" in md
    assert "worst 88.0% at llama-3-8b_b64_c512: **met**" in md
    assert "- llama-3-8b_b64_c512: coresident: predicted 9.90 ms" in md


def test_skipped_and_extra_points():
    md = report.markdown(RESULT)
    assert "skipped: weights + KV cache do not fit" in md
    assert _cells(md, "| llama-2-7b | 96 |")[2] == "300 (extra)"
    assert _cells(md, "| llama-3-8b | 64 |")[2] == "512"


def test_merge_takes_later_runs_and_only_hf_columns_from_hf_files(tmp_path):
    first, second, hf = (tmp_path / n for n in ("a.json", "b.json", "hf.json"))
    first.write_text(json.dumps(RESULT))
    later = dict(RESULT, splits=[64], rows=[dict(RESULT["rows"][0], sequential_us=11000.0)])
    second.write_text(json.dumps(later))
    hf_row = dict(RESULT["rows"][2], hf_eager_us=7000.0, sequential_us=1.0)
    hf.write_text(json.dumps(dict(RESULT, rows=[hf_row])))
    merged = report.merge_results([str(first), str(second)], [str(hf)])
    rows = {(r["model"], r["batch"]): r for r in merged["rows"]}
    assert rows[("llama-3-8b", 64)]["sequential_us"] == 11000.0
    assert rows[("llama-2-7b", 96)]["hf_eager_us"] == 7000.0
    assert rows[("llama-2-7b", 96)]["sequential_us"] == 6000.0     # not from the hf file
    assert merged["splits"] == [40, 48, 64]
    with pytest.raises(ValueError):
        report.merge_results([], [str(hf)])


def test_cli_merges_into_one_file_per_gpu(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(RESULT))
    assert report.main(["--merge", str(path), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["decode_step_h200.json", "decode_step_h200.md"]
    assert report.main([str(path)]) == 0
    assert "# Decode step: NVIDIA H200" in capsys.readouterr().out
