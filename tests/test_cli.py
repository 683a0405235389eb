import subprocess
import sys

import pytest

from pipedecode.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: pipedecode" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["profile", "--out", "x.json"], ["bench", "--points", "64x512"]])
def test_gpu_commands_without_a_gpu_say_so_in_one_line(argv, capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GPU" in err[0]


def test_closed_pipe_is_not_a_traceback(tmp_path):
    # `pipedecode plan ... | head -1`: the reader leaves early; no traceback on stderr
    script = ("import sys; from pipedecode.cli import main; "
              "sys.exit(main(['plan', '--model', 'llama-3-8b', '--device', 'h100', "
              "'--batch', '4', '--context', '256']))")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)   # plan writes schedule.json
    proc.stdout.close()                                  # nobody reads the output
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err
