import json
from pathlib import Path

import pytest
import sim_vs_measured  # benchmarks/sim_vs_measured.py

from pipedecode.sim.calibrate import Measured, compare
from pipedecode.sim.engine_costs import HOST_FACTOR
from pipedecode.sim.strategies import SimOptions

OFFLINE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / \
    "offline_throughput_h200.json"

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
    written = json.loads((tmp_path / "cmp.json").read_text())
    assert written["runs"][0]["within_tolerance"]
    assert written["host_factor"] == HOST_FACTOR and "shipped" in written["host_factor_source"]
    assert [row["terms"] for row in written["ladder"]][0] == "cost model alone"


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
                    "requests": 200, "max_num_seqs": 1024, "ignore_eos": False,
                    "prefill_graphs": False}]
    data["runner"] = {"num_blocks": 5001, "prefill_graphs": {"replays": 3}}
    data["rows"][1].update(elapsed_s=10.0, prefill_s=2.0, decode_s=7.5, decode_steps=300)
    got = sim_vs_measured.runs(data)[0]
    assert got["kv_blocks"] == 5000 and (got["elapsed_s"], got["decode_steps"]) == (10.0, 300)
    assert got["prefill_graphs"] is True
    assert Measured.from_dict(got).untimed_s == pytest.approx(0.5)


def test_the_host_factor_is_fitted_on_the_named_workload_and_refused_without_phases(tmp_path):
    at_one = compare(Measured(output_tokens_per_s=1.0, total_tokens_per_s=1.0, **RUN),
                     SimOptions(host_factor=1.0)).simulated
    phases = dict(prefill_s=at_one.prefill_s, decode_s=at_one.decode_s,
                  elapsed_s=at_one.prefill_s + at_one.decode_s + 2.5 * at_one.untimed_host_s)
    run = dict(RUN, output_tokens_per_s=1.0, total_tokens_per_s=1.0, **phases)
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps({"runs": [run]}))
    out = tmp_path / "cmp.md"
    sim_vs_measured.main([str(measured), "--fit-host-on", RUN["workload"], "--out", str(out)])
    written = json.loads((tmp_path / "cmp.json").read_text())
    assert written["host_factor"] == pytest.approx(2.5)
    assert "fitted on the untimed host time of the 1 run(s)" in out.read_text()
    assert sim_vs_measured.main([str(measured), "--fit-host-on", "c"]) == 2
    measured.write_text(json.dumps({"runs": [dict(RUN, output_tokens_per_s=1.0,
                                                  total_tokens_per_s=1.0)]}))
    assert sim_vs_measured.main([str(measured), "--fit-host-on", RUN["workload"]]) == 2


def test_the_shipped_host_factor_is_the_fit_on_workload_c_of_the_h200_run():
    runs = [Measured.from_dict(r) for r in sim_vs_measured.runs(json.loads(OFFLINE.read_text()))]
    factor, source = sim_vs_measured.host_factor(runs, "c", None)
    assert factor == pytest.approx(HOST_FACTOR, rel=1e-3) and "fixed:1024:1024" in source


def test_several_measured_files_are_compared_together_each_named(tmp_path):
    sim = compare(Measured(output_tokens_per_s=1.0, total_tokens_per_s=1.0, **RUN)).simulated
    paths = []
    for name, seats in (("one.json", 8), ("two.json", 4)):
        path = tmp_path / name
        path.write_text(json.dumps({"gpu": "NVIDIA H200", "commit": "abc1234", "runs": [dict(
            RUN, max_num_seqs=seats, output_tokens_per_s=sim.output_tokens_per_s,
            total_tokens_per_s=sim.total_tokens_per_s)]}))
        paths.append(str(path))
    out = tmp_path / "cmp.md"
    sim_vs_measured.main(paths + ["--out", str(out)])
    text = out.read_text()
    assert "Measured: `one.json` on NVIDIA H200" in text and "; `two.json` on NVIDIA H200" in text
    assert "| `fixed:64:16` x 40 | 8 | prefill-first |" in text
    assert "| `fixed:64:16` x 40 | 4 | prefill-first |" in text
    written = json.loads((tmp_path / "cmp.json").read_text())
    assert [s["name"] for s in written["measured_sources"]] == ["one.json", "two.json"]
    assert len(written["runs"]) == 2
