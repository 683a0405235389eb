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


def test_an_error_of_several_lines_is_printed_as_one():
    from pipedecode.cli import one_line
    from pipedecode.errors import PipedecodeError

    assert one_line(PipedecodeError("bad input:\n    the reason\n")) == "bad input: the reason"
    assert one_line(PipedecodeError("")) == "PipedecodeError"


@pytest.mark.parametrize("argv", [
    ["plan", "--model", "llama-3-8b", "--device", "h100", "--context", "BINARY"],
    ["plan", "--model", "llama-3-8b", "--device", "BINARY", "--context", "5"],
    ["show", "BINARY"],
])
def test_a_binary_file_where_text_is_due_is_one_line(argv, tmp_path, capsys, monkeypatch):
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"\x00\xd0\xff\xfe" * 64)
    monkeypatch.chdir(tmp_path)
    assert main([str(binary) if a == "BINARY" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("not a text file" in err[0] or "not UTF-8 text" in err[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]     # no schedule.json
