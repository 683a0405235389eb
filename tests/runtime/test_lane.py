import pytest

from pipedecode.runtime.kernels import _attention_tma_plan as tma_plan
from pipedecode.runtime.kernels.tiling import choose_config, tile_smem_bytes
from pipedecode.runtime.lane import (REGISTERS_PER_SM, Lane, attention_footprint,
                                     coresident_lanes)

LLAMA3_8B_LINEARS = [(6144, 4096, False), (4096, 4096, False), (14336, 4096, True),
                     (4096, 14336, False), (128256, 4096, False)]


def test_lane_of_an_sm_count_none_and_a_lane():
    assert Lane.of(48) == Lane(48) and not Lane(48).coresident
    assert Lane.of(None) == Lane() and Lane().tile_budget is None
    lane = Lane(132, 65536, 12288)
    assert Lane.of(lane) is lane and lane.coresident


@pytest.mark.parametrize("kwargs", [dict(sm_count=0), dict(sm_count=132, smem_bytes=65536),
                                    dict(smem_bytes=65536, registers=12288),
                                    dict(sm_count=132, smem_bytes=-1, registers=1)])
def test_lane_rejects_incomplete_budgets(kwargs):
    with pytest.raises(ValueError, match="Lane"):
        Lane(**kwargs)


def test_llama3_8b_sides_share_each_sm_within_its_resources():
    """The 64 KiB attention of Llama-3-8B (GQA group 4, head_dim 128) as its launch plan sizes
    it, and the matmul budget it leaves: by hand, 228 KiB - (61,552 + 1,024) - 1,024 bytes and
    65,536 - 48 x 256 registers."""
    att = attention_footprint(64 * 1024, 128, 4)
    # a ring of 7 panels [64 keys, 64 dims], q and P for 8 padded heads, 7 x 2 barriers, scratch
    assert att.smem_bytes == 7 * 64 * 64 * 2 + 8 * (128 + 64) * 2 + 16 * 7 + 1024 == 61552
    assert att.registers == 48 * 256
    attention, compute = coresident_lanes(132, 64 * 1024, 128, 4)
    assert attention == Lane(132, 65536, 12288)
    assert compute == Lane(132, 233472 - 62576 - 1024, REGISTERS_PER_SM - 12288)
    # every Llama-3-8B GEMM of a micro-batch gets a tile that fits beside the attention
    for tokens in (64, 256, 1024, 2048):
        for n, k, pair in LLAMA3_8B_LINEARS:
            cfg = choose_config(tokens, n, k, 132, pair=pair, budget=compute.tile_budget)
            tile = (cfg.block_m, cfg.block_n, cfg.block_k)
            smem = tile_smem_bytes(tile, cfg.num_stages, pair)
            assert smem + att.smem_bytes + 2 * tma_plan.CTA_RESERVED_BYTES \
                <= tma_plan.SMEM_PER_SM_BYTES
            assert cfg.maxnreg * 32 * cfg.num_warps + att.registers <= REGISTERS_PER_SM


def test_an_attention_that_leaves_no_room_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match="too little|no room"):
        coresident_lanes(132, 200 * 1024, 128, 4)
    with pytest.raises(ValueError, match="too small"):       # the ring itself does not fit
        attention_footprint(8 * 1024, 128, 4)
