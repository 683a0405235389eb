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
    assert len(rows) == len(result.points) == 12
    png = tmp_path / "sim.png"
    report.plot(result, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
