"""The prefill-overhead benchmark's pure parts: shapes, inputs and the table."""

import numpy as np
import pytest

import prefill_overhead


def test_shapes_parse_and_bad_ones_name_themselves():
    assert prefill_overhead.parse_shapes("1x16, 4x512") == [(1, 16), (4, 512)]
    assert len(prefill_overhead.parse_shapes(prefill_overhead.SHAPES)) == 10
    for bad, why in (("4by2", "is not PROMPTSxTOKENS"), ("0x16", "at least 1"), ("", "no shapes")):
        with pytest.raises(ValueError, match=why):
            prefill_overhead.parse_shapes(bad)


def test_inputs_hold_every_prompt_in_order_in_the_first_slots():
    ids, starts, slots = prefill_overhead.prefill_inputs(3, 5, vocab=100)
    assert ids.shape == (15,) and ids.max() < 100 and starts.dtype == np.int32
    assert starts.tolist() == [0, 5, 10, 15] and slots.tolist() == list(range(15))


def test_the_table_has_a_row_per_shape():
    row = dict(prompts=4, tokens_per_prompt=128, tokens=512, wall_us=12_000.0, enqueue_us=11_500.0,
               kernel_us=4_000.0, kernels=900, cost_model_us=3_900.0, wall_over_kernels=3.0,
               graph_wall_us=4_800.0)
    big = dict(row, prompts=16, tokens_per_prompt=512, tokens=8192, graph_wall_us=None)
    result = dict(gpu="NVIDIA H200", date="2026-12-02", commit="abc1234", model="llama-3-8b",
                  layers=32, profile="h200", repeats=10, rows=[row, big])
    md = prefill_overhead.markdown(result)
    assert md.startswith("# Prefill call overhead: NVIDIA H200")
    assert "| 4 x 128 | 512 | 12.00 | 11.50 | 4.00 | 900 | 3.90 | 3.00 | 4.80 | 2.50x |" in md
    assert "| 16 x 512 | 8192 |" in md and "past the graphs' buckets" in md
