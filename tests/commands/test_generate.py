"""`pipedecode generate` on the CPU: the engine over the reference runner (the paged GPU runner
is what runs it for real), JSONL in and out, and every way a file can be wrong."""

import json

import pytest

from pipedecode.cli import main
from pipedecode.engine import llm as engine

from tests.engine.helpers import hf_greedy, ragged_prompts, tiny_model
from tests.engine.reference_runner import ReferenceRunner

PROMPTS = ragged_prompts(5, 2, 9, seed=7)


@pytest.fixture
def reference_runner(monkeypatch):
    """The engine's default runner replaced by the reference runner (a pool of 15 blocks)."""
    monkeypatch.setattr(engine, "default_runner", ReferenceRunner.factory(num_blocks=16))


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def _args(tmp_path, prompts, *extra):
    return ["generate", "--model", "tiny-llama", "--prompts", prompts,
            "--out", str(tmp_path / "out.jsonl"), "--device", "h100", "--block-size", "4",
            "--no-progress", *extra]


def test_requests_in_outputs_out(tmp_path, capsys, reference_runner):
    lines = [{"prompt_token_ids": p} for p in PROMPTS]
    lines[1]["max_tokens"], lines[2]["id"] = 3, "third"
    prompts = _write(tmp_path / "in.jsonl", lines[:2] + [""] + lines[2:])   # a blank line
    code = main(_args(tmp_path, prompts, "--temperature", "0", "--max-tokens", "6",
                      "--policy", "prefill-first"))
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, "third", 3, 4]
    assert [r["index"] for r in rows] == list(range(5))
    model = tiny_model()
    for row, prompt, line in zip(rows, PROMPTS, lines):
        n = line.get("max_tokens", 6)
        assert row["token_ids"] == hf_greedy(model, prompt, n, eos=[2])
        assert row["prompt_tokens"] == len(prompt) and row["text"] is None
        assert row["finish_reason"] in ("stop", "length") and row["error"] is None
        assert row["arrival_time_s"] <= row["first_token_time_s"] <= row["finish_time_s"]
    assert "5 requests" in out and "preemptions" in out and "peak KV" in out
    assert "wrote" in out and str(tmp_path / "out.jsonl") in out


def test_malformed_lines_are_all_reported_and_nothing_loads_or_is_written(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(engine, "LLM", lambda *a, **k: pytest.fail("the model was loaded"))
    prompts = _write(tmp_path / "in.jsonl", [
        {"prompt_token_ids": [5, 6]},
        "{not json",
        [1, 2],
        {"prompt": "a", "prompt_token_ids": [1]},
        {"prompt_token_ids": []},
        {"prompt_token_ids": [1], "temprature": 0.5},
        {"prompt": ""},
        {"prompt_token_ids": [1], "id": [3]},
    ])
    assert main(_args(tmp_path, prompts)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1             # the CLI prints errors as one line
    reported = dict(x.split(": ", 1) for x in err.split("in.jsonl line ")[1:])
    expected = {"2": "not JSON", "3": "expected a JSON object", "4": "give exactly one of",
                "5": "non-empty list", "6": "unknown field(s) ['temprature']",
                "7": "non-empty string", "8": '"id" must be'}
    assert reported.keys() == expected.keys()          # line 1 is fine
    assert all(expected[n] in reported[n] for n in expected)
    assert "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("line, words", [
    ({"prompt_token_ids": [5], "max_tokens": 0}, "SamplingParams.max_tokens must be a positive"),
    ({"prompt_token_ids": [5], "top_p": 2}, "SamplingParams.top_p"),
    ({"prompt_token_ids": [5], "id": 0}, "id 0 repeats line 1"),
])
def test_bad_sampling_fields_and_ids_name_their_line(tmp_path, capsys, line, words):
    prompts = _write(tmp_path / "in.jsonl", [{"prompt_token_ids": [4]}, "", line])
    assert main(_args(tmp_path, prompts)) == 2
    assert f"line 3: {words}" in capsys.readouterr().err


def test_requests_the_engine_refuses_name_their_line(tmp_path, capsys, reference_runner):
    prompts = _write(tmp_path / "in.jsonl", [{"prompt_token_ids": [4]}, "",
                                             {"prompt_token_ids": [4] * 70}])   # pool: 60 tokens
    assert main(_args(tmp_path, prompts)) == 2
    err = capsys.readouterr().err
    assert "in.jsonl line 3: request 1: the prompt of 70 tokens" in err and "KV cache" in err
    prompts = _write(tmp_path / "in.jsonl", [{"prompt": "hello"}])
    assert main(_args(tmp_path, prompts)) == 2
    assert "line 1: request 0: a text prompt needs a tokenizer, and the preset 'tiny-llama'" \
        in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


class _FailingRunner(ReferenceRunner):
    def decode(self, seqs, micro_batches):
        if sum(kind == "decode" for kind, _, _ in self.calls) == 3:
            raise RuntimeError("device lost")
        return super().decode(seqs, micro_batches)


def test_a_failure_part_way_writes_every_request(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine, "default_runner", _FailingRunner.factory(num_blocks=16))
    lines = [{"prompt_token_ids": p, "max_tokens": 2 if i == 0 else 8, "ignore_eos": True}
             for i, p in enumerate(PROMPTS)]
    prompts = _write(tmp_path / "in.jsonl", lines)
    assert main(_args(tmp_path, prompts, "--temperature", "0")) == 1
    err = capsys.readouterr().err
    assert "device lost" in err and "1 of 5 requests finished" in err
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["finish_reason"] for r in rows] == ["length"] + ["error"] * 4
    assert rows[0]["token_ids"] == hf_greedy(tiny_model(), PROMPTS[0], 2)
    assert "device lost" in rows[1]["error"]


def test_files_that_are_not_there(tmp_path, capsys):
    assert main(_args(tmp_path, str(tmp_path / "missing.jsonl"))) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    empty = _write(tmp_path / "in.jsonl", [""])
    assert main(_args(tmp_path, empty)) == 2
    assert "holds no requests" in capsys.readouterr().err
    ok = _write(tmp_path / "in.jsonl", [{"prompt_token_ids": [1]}])
    args = _args(tmp_path, ok)
    args[args.index("--out") + 1] = str(tmp_path / "nope" / "out.jsonl")
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_documents_both_formats(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert '"prompt_token_ids"' in text and '"finish_reason"' in text and "--policy" in text


# ---- pipeline parallel --------------------------------------------------------------------
def test_a_pipeline_outside_torchrun_is_one_line_before_the_model_loads(tmp_path, capsys,
                                                                        monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(engine, "load_model_and_tokenizer",
                        lambda *a, **k: pytest.fail("the model was loaded"))
    prompts = _write(tmp_path / "in.jsonl", [{"prompt_token_ids": p} for p in PROMPTS])
    assert main(_args(tmp_path, prompts, "--pipeline-parallel", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipedecode generate: error: pipeline_parallel_size=2 needs one "
                          "process per stage started by torchrun") and "\n" not in err
    assert "torchrun --nproc-per-node 2" in err
    assert main(_args(tmp_path, prompts, "--pipeline-parallel", "0")) == 2
    assert "--pipeline-parallel must be positive" in capsys.readouterr().err


def test_torchrun_runs_two_stages_and_rank_0_writes_the_outputs(tmp_path, capsys):
    import os
    import subprocess
    import sys

    from tests.distributed.spawn import free_port

    lines = [{"prompt_token_ids": p, "max_tokens": 6} for p in PROMPTS]
    prompts = _write(tmp_path / "in.jsonl", lines)
    assert main(_args(tmp_path, prompts, "--temperature", "0")) == 0
    want = (tmp_path / "out.jsonl").read_text().splitlines()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "pipeline.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(free_port()), "-m", "pipedecode.cli",
               *_args(tmp_path, prompts, "--temperature", "0", "--pipeline-parallel", "2")]
    command[command.index(str(tmp_path / "out.jsonl"))] = str(out)
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    got = out.read_text().splitlines()
    assert [json.loads(x)["token_ids"] for x in got] == [json.loads(x)["token_ids"] for x in want]
    assert done.stdout.count("pipedecode generate: 5 requests") == 1     # rank 0 alone


def test_under_torchrun_a_stage_that_exits_still_leaves_every_request_written(tmp_path):
    """torchrun stops every process once one exits; rank 0 writes the outputs first."""
    import os
    import subprocess
    import sys

    from tests.distributed.spawn import free_port

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "stage_1_exits.py"
    script.write_text("import os, sys\n"
                      f"sys.path.insert(0, {root!r})\n"
                      "from pipedecode.distributed import worker\n"
                      "if os.environ['RANK'] == '1':\n"
                      "    worker.inject_fault(4, 'exit')\n"
                      "from pipedecode.cli import main\n"
                      "sys.exit(main(sys.argv[1:]))\n")
    lines = [{"prompt_token_ids": p, "max_tokens": n} for p, n in zip(PROMPTS, (1, 2, 9, 9, 9))]
    prompts = _write(tmp_path / "in.jsonl", lines)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(free_port()), str(script),
               *_args(tmp_path, prompts, "--temperature", "0", "--pipeline-parallel", "2",
                      "--policy", "prefill-first")]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode != 0
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["finish_reason"] == "length"
    failed = [r for r in rows if r["finish_reason"] == "error"]
    assert failed and all("stage 1 (layers 1-1) exited" in r["error"] for r in failed)
    assert "stage 1 (layers 1-1) exited" in done.stderr and "all written to" in done.stderr
