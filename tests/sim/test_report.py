from pipedecode.sim import report
from pipedecode.sim.strategies import SimOptions
from pipedecode.sim.sweep import SweepSpec, run_sweep


def test_the_markdown_says_it_is_a_simulation_and_states_its_assumptions(tmp_path):
    result = run_sweep(SweepSpec(models=("llama-3-8b",), gpus=(1, 2), requests=20,
                                 workload="fixed:32:8", options=SimOptions(seqs_per_gpu=4)),
                       progress=False)
    text = report.markdown(result)
    assert "A simulation, not a measurement" in text
    assert "63 GB/s per direction" in text and "450 GB/s per direction" in text
    assert "h200" in text and "measured profile" in text
    rows = [line for line in text.splitlines() if line.startswith("| llama-3-8b")]
    results = [r for r in rows if r.count("|") == 12]              # 11 columns
    assert len(results) == len(result.points) == 12
    ratio = [r for r in rows if r.count("|") == 8]                  # 2 GPUs under 2 links
    assert len(ratio) == 2 and all(r.count("x |") == 4 for r in ratio)
    assert "pipedecode simulate --model llama-3-8b" in text and "--requests 20" in text
    png = tmp_path / "sim.png"
    report.plot(result, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
