import json

import pytest

from pipedecode.cli import main


def _errors(err: str) -> list[str]:
    """The error lines on stderr (the progress bar draws there too, with carriage returns)."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.startswith("pipedecode simulate")]

SMALL = ["simulate", "--model", "llama-3-8b", "--gpus", "1,2", "--requests", "24",
         "--workload", "uniform:16:64:4:16", "--seqs-per-gpu", "8"]


def test_simulate_prints_a_line_per_point_and_writes_each_file_asked(tmp_path, capsys):
    outs = [tmp_path / f"sim.{ext}" for ext in ("json", "md", "png")]
    rc = main(SMALL + [a for p in outs for a in ("--out", str(p))])
    assert rc == 0
    captured = capsys.readouterr()
    text = captured.out
    assert text.count("llama-3-8b") == 3 * 2 + 3 * 2          # 1 GPU under both links, 2 GPUs
    assert "simulated (not measured)" in text and str(outs[2]) in text
    assert "simulated points: 100%" in captured.err             # the progress bar
    data = json.loads(outs[0].read_text())
    assert data["simulated"] and len(data["points"]) == 12
    assert "A simulation, not a measurement" in outs[1].read_text()
    assert "](sim.png)" in outs[1].read_text()                  # the plot beside it, shown
    assert outs[2].read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.json", "sim.md", "sim.png"]


def test_a_model_that_fits_nowhere_asked_is_one_line_and_no_file(tmp_path, capsys):
    out = tmp_path / "sim.json"
    rc = main(["simulate", "--model", "llama-3-70b", "--gpus", "1", "--requests", "8",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(_errors(err)) == 1 and "131.4 GiB of weights" in _errors(err)[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_failure_keeps_the_earlier_file(tmp_path, capsys):
    out = tmp_path / "sim.json"
    out.write_text("earlier")
    assert main(["simulate", "--model", "llama-3-70b", "--gpus", "1", "--requests", "8",
                 "--out", str(out)]) == 2
    assert out.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["sim.json"]


@pytest.mark.parametrize("args, message", [
    (["--workload", "zipf"], "cannot read workload 'zipf'"),
    (["--requests", "0"], "--requests must be positive"),
    (["--model", "gpt-9"], "gpt-9"),
    (["--gpus", "0"], "GPU counts must be positive"),
    (["--out", "sim.txt"], "name a .json, .md or .png file"),
    (["--device", "h900"], "h900"),
    (["--step-overhead-us", "-1"], "step_overhead_us must be a number >= 0")])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["simulate", "--model", "llama-3-8b", "--gpus", "1", "--requests", "8"]
    rc = main(argv + args)
    err = capsys.readouterr().err
    assert rc == 2 and len(_errors(err)) == 1 and message in _errors(err)[0]
    assert list(tmp_path.iterdir()) == []


def test_controller_time_on_the_critical_path_slows_the_run(capsys):
    argv = ["simulate", "--model", "llama-3-8b", "--gpus", "2", "--link", "pcie5", "--strategy",
            "tdpipe", "--requests", "16", "--workload", "fixed:16:8"]
    assert main(argv) == 0
    free = capsys.readouterr().out
    assert main(argv + ["--step-overhead-us", "20000"]) == 0
    slow = capsys.readouterr().out

    def out_tokens_per_s(text):
        line = next(x for x in text.splitlines() if x.startswith("llama-3-8b"))
        return float(line.split()[5])

    assert out_tokens_per_s(slow) < 0.5 * out_tokens_per_s(free)


def test_bad_gpu_lists_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--gpus", "two"])
    assert exit_info.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_without_the_prefill_launch_floor_small_prefills_run_faster(capsys, tmp_path):
    """Two pipeline stages prefill eagerly (one GPU would replay CUDA graphs)."""
    argv = ["simulate", "--model", "llama-3-8b", "--gpus", "2", "--link", "nvlink4",
            "--strategy", "pipeline", "--requests", "64", "--seqs-per-gpu", "2",
            "--workload", "fixed:16:4"]
    assert main(argv) == 0
    floored = capsys.readouterr().out
    out = tmp_path / "sim.md"
    assert main(argv + ["--no-prefill-launch", "--out", str(out)]) == 0
    hidden = capsys.readouterr().out

    def out_tokens_per_s(text):
        line = next(x for x in text.splitlines() if x.startswith("llama-3-8b"))
        return float(line.split()[5])

    assert out_tokens_per_s(hidden) > 1.5 * out_tokens_per_s(floored)
    text = out.read_text()
    assert "--no-prefill-launch" in text and "launch time on the host" in text
