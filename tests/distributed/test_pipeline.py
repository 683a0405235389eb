"""The pipeline end to end on the CPU: 2 and 4 gloo processes spawned with torchrun's
environment, tiny 4-layer models, each policy: the tokens of the one-process engine, greedy and
seeded; a stage that raises, exits (a middle one, of 3) or stops answering is named by rank 0,
which returns the requests already finished and the others with finish_reason "error", and
no process hangs.
On 2+ GPUs: torchrun runs `pipedecode generate --pipeline-parallel 2` over NCCL."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.distributed import cases
from tests.distributed.spawn import run_world

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def one_process():
    return cases.run_cases(1)


@pytest.fixture(scope="module", params=[2, 4], ids=["2-stages", "4-stages"])
def pipeline(request):
    results, codes = run_world(request.param, cases.pipeline_cases)
    failed = {r: v for r, (status, v) in results.items() if status != "ok"}
    assert not failed and codes == [0] * request.param, (failed, codes)
    return request.param, results


@pytest.mark.parametrize("family", cases.FAMILIES)
@pytest.mark.parametrize("policy", cases.POLICIES)
def test_tokens_equal_the_one_process_engine(pipeline, one_process, family, policy):
    stages, results = pipeline
    got, want = results[0][1][(family, policy)], one_process[(family, policy)]
    assert got["greedy"] == want["greedy"]
    assert got["mixed"] == want["mixed"]              # greedy of several lengths, one seeded
    assert got["kv_blocks"] == want["kv_blocks"] == cases.POOL_BLOCKS
    assert len(got["stage_layers"]) == stages and sum(got["stage_layers"]) == cases.LAYERS
    if policy == "prefill-first":                     # the small pool preempts in both
        assert got["preemptions"] > 0 and want["preemptions"] > 0


def test_only_rank_0_returns_outputs(pipeline):
    stages, results = pipeline
    for rank in range(1, stages):
        for key, case in results[rank][1].items():
            if key == "refused":
                continue
            assert case["greedy"] is None and case["mixed"] is None
            assert case["kv_blocks"] == cases.POOL_BLOCKS     # every stage's pool the same


def test_a_refused_request_ends_every_ranks_call_and_the_pipeline_serves_on(pipeline,
                                                                           one_process):
    stages, results = pipeline
    driver = results[0][1]["refused"]
    assert driver["refused"] == "request 1: the prompt is empty; give at least one token"
    assert driver["after"] == one_process[("tiny-llama", "temporal")]["greedy"][:3]
    for rank in range(1, stages):
        assert results[rank][1]["refused"] == dict(refused=None, after=[])


def _finished_as_in_one_process(outcome, one_process):
    want = one_process[("tiny-llama", "prefill-first")]["mixed"]
    done = [i for i, o in enumerate(outcome["outputs"]) if o[0]]
    failed = [o for o in outcome["outputs"] if not o[0]]
    assert done and failed
    for i in done:
        assert outcome["outputs"][i][1] == want[i]
    assert all(o[2] == "error" and "stage" in o[3] for o in failed)
    return failed


@pytest.mark.parametrize("size, stage, how, expect", [
    (3, 1, "exit", "stage 1 (layers 2-2) exited (its process is gone)"),
    (2, 1, "raise", "stage 1 (layers 2-3) failed: RuntimeError: injected fault after 4 "
                    "micro-batches"),
])
def test_a_lost_stage_is_named_and_finished_requests_are_kept(one_process, size, stage, how,
                                                              expect):
    results, codes = run_world(size, cases.failing_stage, stage, 4, how)
    status, outcome = results[0]
    assert status == "ok" and outcome["error"] is not None
    assert expect in outcome["error"]
    failed = _finished_as_in_one_process(outcome, one_process)
    assert all(expect in o[3] for o in failed)
    assert codes[stage] == (17 if how == "exit" else 0)
    for rank in range(1, size):                # every other stage stopped, with the reason
        if rank != stage:
            assert results[rank][0] == "raised" and "StageFailure" in results[rank][1]


def test_a_stage_that_stops_answering_times_out(one_process):
    results, codes = run_world(2, cases.failing_stage, 1, 4, "hang", 2.0)
    status, outcome = results[0]
    assert status == "ok"
    assert "stage 1 (layers 2-3) did not answer within 2 s" in outcome["error"]
    _finished_as_in_one_process(outcome, one_process)


# ---- GPUs ----------------------------------------------------------------------------------
def _generate(tmp_path, name: str, prefix: list[str], *extra: str) -> list[dict]:
    prompts = tmp_path / "in.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_token_ids": p}) + "\n"
                               for p in cases.PROMPTS))
    out = tmp_path / f"{name}.jsonl"
    command = prefix + ["-m", "pipedecode.cli", "generate", "--model", "tiny-llama",
                        "--prompts", str(prompts), "--out", str(out), "--temperature", "0",
                        "--max-tokens", "10", "--dtype", "float32", "--no-progress", *extra]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line)["token_ids"] for line in out.read_text().splitlines()]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_gpu_two_stages_over_nccl_equal_one_gpu(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable),
                                                        "torchrun")
    one = _generate(tmp_path, "one", [sys.executable])
    two = _generate(tmp_path, "two", [torchrun, "--nproc-per-node", "2"],
                    "--pipeline-parallel", "2")
    assert two == one
