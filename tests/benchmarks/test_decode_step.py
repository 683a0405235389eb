"""The decode-step benchmark script imports and parses without a GPU, and says it needs one."""

import pytest
import torch

import decode_step


def test_options_parse_into_lists():
    args = decode_step.parse_args(["--splits", "32,64", "--points", "64x512,mixed",
                                   "--extra", "1024x256", "--micro-batches", "2,3"])
    assert args.splits == [32, 64] and args.micro_batches == [2, 3]
    assert args.points == {"64x512", "mixed"} and args.extra == [(1024, 256)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_without_a_gpu_it_exits_2_in_one_line(capsys, tmp_path):
    assert decode_step.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "decode_step: needs a CUDA GPU\n"
    assert not list(tmp_path.iterdir())
