"""The benchmark's grid, memory check and floors (no GPU)."""

import pytest

import decode_step_points as points
from pipedecode.models import model_shape
from pipedecode.planner.cost import CostModel
from pipedecode.profiles import load_profile

LLAMA3 = model_shape("llama-3-8b")


def test_grid_points_and_names():
    every = points.grid_points("llama-2-7b", extra=[(1024, 256)])
    assert every[-1] == (64, None, points.MIXED["llama-2-7b"]) and (1024, 256, None) in every
    assert points.grid_points("llama-3-8b", only={"64x512", "mixed"}) == \
        [(64, 512, None), (256, None, points.MIXED["llama-3-8b"])]
    assert points.point_name("llama-3-8b", 64, 512) == "llama-3-8b_b64_c512"
    assert points.point_name("llama-3-8b", 256, None) == "llama-3-8b_b256_mixed"


def test_mixed_lengths_are_fixed_by_the_seed_and_in_range():
    lens = points.context_lens_for(256, None, (256, 64, 1024))
    assert lens == points.context_lens_for(256, None, (256, 64, 1024))
    assert min(lens) >= 64 and max(lens) <= 1024 and len(set(lens)) > 100


def test_fits_counts_weights_and_kv():
    weights = LLAMA3.weight_bytes_per_layer() * 32 + 2 * 128256 * 4096 * 2
    assert points.fits(LLAMA3, 1, 16, 2 * weights)
    assert not points.fits(LLAMA3, 1, 16, weights)
    assert not points.fits(LLAMA3, 1024, 8192, 80 * 2 ** 30)       # 1 TiB of KV


def test_floors_are_the_cost_model_floors():
    profile = load_profile("h100")
    lens = [512] * 64
    floors = points.floors_us(LLAMA3, lens, profile)
    assert floors["roofline_floor_us"] == CostModel(LLAMA3, profile).roofline_floor_us(64, 64 * 512)
    # two micro-batches read the weights twice: memory-bound at 64 tokens, about twice the floor
    assert floors["interleaved_floor_us"] == pytest.approx(1.9 * floors["roofline_floor_us"],
                                                           rel=0.1)
    assert floors["op_floor_us"] == CostModel(LLAMA3, profile).op_floor_us(64, 64 * 512)
    assert floors["op_floor_us"] >= floors["roofline_floor_us"]
    groups = points.balanced_groups([5, 1, 4, 2], 2)
    assert sorted(len(g) for g in groups) == [2, 2] and sorted(sum(groups, [])) == [0, 1, 2, 3]
