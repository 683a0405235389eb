"""What every benchmark result records and where it is written."""

import json

import record


def test_heading_names_gpu_date_and_commit():
    env = dict(gpu="NVIDIA H100 80GB HBM3", gpu_key="h100", date="2030-01-02T03:04+00:00",
               commit="abc1234", torch="2.13.0", transformers=None, triton="3.9.0")
    lines = record.heading("Kernels", env)
    assert lines[0] == "# Kernels: NVIDIA H100 80GB HBM3"
    assert lines[2] == "Measured 2030-01-02T03:04+00:00 (UTC) at commit abc1234; torch 2.13.0, " \
                       "triton 3.9.0."


def test_write_names_files_by_benchmark_and_gpu(tmp_path):
    path = record.write(str(tmp_path), "stage_profile", {"gpu_key": "h200", "x": 1}, "# md\n")
    assert path.endswith("stage_profile_h200")
    assert json.loads((tmp_path / "stage_profile_h200.json").read_text())["x"] == 1
    assert (tmp_path / "stage_profile_h200.md").read_text() == "# md\n"


def test_environment_of_the_cpu_and_the_commit(monkeypatch):
    monkeypatch.setenv("PIPEDECODE_COMMIT", "feed123")
    env = record.environment("cpu")
    assert env["gpu_key"] == "cpu" and env["commit"] == "feed123" and env["torch"]
    assert record.environment("NVIDIA H200")["gpu_key"] == "h200"
    monkeypatch.delenv("PIPEDECODE_COMMIT")
    commit = record.git_commit()
    assert commit == "unknown" or len(commit.split("-")[0]) >= 7
