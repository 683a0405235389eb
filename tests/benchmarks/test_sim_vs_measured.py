import json

import sim_vs_measured  # benchmarks/sim_vs_measured.py

from pipedecode.sim.calibrate import Measured, compare

RUN = dict(workload="fixed:64:16", policy="prefill-first", requests=40, max_num_seqs=8)


def test_a_run_the_simulator_matches_passes_and_writes_both_files(tmp_path):
    sim = compare(Measured(output_tokens_per_s=1.0, total_tokens_per_s=1.0, **RUN)).simulated
    measured = tmp_path / "measured.json"
    run = dict(RUN, output_tokens_per_s=sim.output_tokens_per_s * 1.05,
               total_tokens_per_s=sim.total_tokens_per_s)
    measured.write_text(json.dumps({"runs": [run]}))
    out = tmp_path / "cmp.md"
    assert sim_vs_measured.main([str(measured), "--out", str(out)]) == 0
    assert "1 of 1 runs within 10%" in out.read_text() and "-4.8%" in out.read_text()
    assert json.loads((tmp_path / "cmp.json").read_text())[0]["within_tolerance"]


def test_a_run_off_by_more_than_10pct_fails_and_a_bad_file_says_why(tmp_path, capsys):
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps(dict(RUN, output_tokens_per_s=1.0, total_tokens_per_s=1.0)))
    assert sim_vs_measured.main([str(measured)]) == 1
    measured.write_text(json.dumps({"workload": "sharegpt"}))
    assert sim_vs_measured.main([str(measured)]) == 2
    assert "lacks policy" in capsys.readouterr().err


def test_an_offline_throughput_result_gives_its_sequential_pipedecode_cells():
    data = {"model": "llama-3-8b", "profile": "h200", "max_num_seqs": 1024,
            "requests": {"a": 51, "b": 200},
            "rows": [{"workload": "a", "system": "transformers", "status": "ok",
                      "output_tokens_per_s": 197.0, "total_tokens_per_s": 373.0},
                     {"workload": "b", "system": "pipedecode", "policy": "temporal",
                      "interleave": False, "predictor": "online", "status": "ok",
                      "output_tokens_per_s": 5000.0, "total_tokens_per_s": 8000.0},
                     {"workload": "b", "system": "pipedecode", "policy": "temporal",
                      "interleave": True, "predictor": "online", "status": "ok",
                      "output_tokens_per_s": 5100.0, "total_tokens_per_s": 8100.0},
                     {"workload": "a", "system": "pipedecode", "policy": "prefill-first",
                      "interleave": False, "predictor": "online",
                      "status": "not run (time budget)"}]}
    got = sim_vs_measured.runs(data)
    assert got == [{"workload": "sharegpt", "policy": "temporal", "output_tokens_per_s": 5000.0,
                    "total_tokens_per_s": 8000.0, "model": "llama-3-8b", "device": "h200",
                    "requests": 200, "max_num_seqs": 1024, "ignore_eos": False}]
