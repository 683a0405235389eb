"""`pipedecode profile` without a GPU: one line, exit code 2."""

import pytest
import torch

from pipedecode.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_without_a_gpu_says_so(tmp_path, capsys):
    assert main(["profile", "--out", str(tmp_path / "p.json"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "CUDA GPU" in err and "\n" == err[-1] and err.count("\n") == 1
    assert not (tmp_path / "p.json").exists()
