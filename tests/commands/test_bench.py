"""`pipedecode bench` passes on only the options given, in the benchmark script's spelling."""

import os
import sys

from pipedecode.cli import build_parser
from pipedecode.commands.bench import _argv, _script


def test_given_options_reach_the_script_and_the_rest_keep_its_defaults():
    args = build_parser().parse_args(["bench", "--points", "64x512", "--hf-eager",
                                      "--compile-points", "llama-3-8b:64x1024"])
    argv = _argv(args)
    assert argv == ["--points", "64x512", "--compile-points", "llama-3-8b:64x1024", "--hf-eager"]
    sys.path.insert(0, os.path.dirname(_script()))
    import decode_step

    parsed = decode_step.parse_args(argv)
    assert parsed.points == {"64x512"} and parsed.hf_eager and not parsed.triton_seq
    assert parsed.splits == decode_step.parse_args([]).splits
