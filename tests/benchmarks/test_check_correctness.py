"""The correctness check's markdown from a small result (no GPU)."""

import check_correctness

RESULT = {"gpu": "NVIDIA H100 80GB HBM3", "date": "2030-01-02T03:04+00:00", "commit": "abc1234",
          "ok": True,
          "partitions": {"route": "driver", "memory_granted": 48, "compute_granted": 84,
                         "memory_sms_used": 48, "compute_sms_used": 84, "overlap_sms": 0},
          "generation": [{"model": "llama-3-8b", "requests": 6, "tokens_inter_eq_seq": True,
                          "rel_err_pd_vs_fp32": 3e-3, "requests_tokens_eq_hf": 6, "ok": True}],
          "float32": [{"model": "llama-3-8b", "dtype": "float32", "requests": 6,
                       "sequential_requests_tokens_eq_hf": 6,
                       "interleaved_requests_tokens_eq_hf": 5},
                      {"model": "tiny-qwen2", "dtype": "float32", "error": "RuntimeError: x"}]}


def test_markdown_has_every_check():
    md = check_correctness.markdown(RESULT)
    assert md.startswith("# GPU correctness of the executor: NVIDIA H100 80GB HBM3")
    assert "abc1234" in md and "Overall: ok" in md and "0 shared" in md
    assert "| llama-3-8b | bf16 | 6 | True | 3.00e-03 | 6 | True |" in md
    assert "sequential 6, interleaved 5" in md and "RuntimeError: x" in md
