"""The matmul tile chooser within a budget (`tiling.TileBudget`, co-resident mode)."""

import pytest

from pipedecode.runtime.kernels import tiling
from pipedecode.runtime.kernels.tiling import (MatmulConfig, TileBudget, choose_config, fit_tile,
                                               tile_registers, tile_smem_bytes)

BIG = tiling.TILES[0]            # 128 x 256 x 64, 8 warps, 3 stages


def test_footprints_match_the_offline_compile():
    # the PTX of the 128x256x64 tile at 3 stages holds 147,456 bytes of shared memory and the
    # compile used 204 registers per thread, granted in steps of 8
    assert tile_smem_bytes(BIG, 3) == 3 * (128 * 64 + 256 * 64) * 2 == 147456
    assert tile_smem_bytes(tiling.PAIR_TILES[0], 3, pair=True) == 147456
    assert tile_registers(BIG) == 208
    assert tile_registers(tiling.PAIR_TILES[0], pair=True) == 208
    assert tile_registers((64, 64, 64, 4, 4, 0.55)) == 112


def test_a_tile_loses_stages_before_it_is_dropped():
    assert fit_tile(BIG, False, None) == (BIG, None)
    fitted, maxnreg = fit_tile(BIG, False, TileBudget(100 * 1024, 53248))
    assert fitted[4] == 2 and maxnreg == 208          # 98,304 bytes at two stages
    assert fit_tile(BIG, False, TileBudget(90 * 1024, 53248)) is None
    assert fit_tile(BIG, False, TileBudget(160 * 1024, 49152)) is None   # 192 < 204 registers


def test_the_budget_bounds_the_choice_and_caps_registers():
    free = choose_config(1024, 4096, 4096, 132)
    assert free.maxnreg is None and (free.block_m, free.block_n) == (128, 256)
    same = choose_config(1024, 4096, 4096, 132, budget=TileBudget(169872, 53248))
    assert (same.block_m, same.block_n, same.num_stages, same.maxnreg) == (128, 256, 3, 208)
    tight = TileBudget(144304, 49152)           # what a 96 KiB attention leaves
    for m in (64, 512, 2048):
        cfg = choose_config(m, 4096, 4096, 132, budget=tight)
        assert tile_smem_bytes((cfg.block_m, cfg.block_n, cfg.block_k), cfg.num_stages) \
            <= tight.smem_bytes
        assert cfg.maxnreg * 32 * cfg.num_warps <= tight.registers
        assert (cfg.block_m, cfg.block_n) != (128, 256)
    with pytest.raises(ValueError, match="no matmul tile fits"):
        choose_config(64, 4096, 4096, 132, budget=TileBudget(8192, 4096))


def test_budget_and_maxnreg_are_validated():
    with pytest.raises(ValueError, match="TileBudget"):
        TileBudget(0, 1024)
    with pytest.raises(ValueError, match="maxnreg"):
        MatmulConfig(block_m=64, block_n=64, maxnreg=300)
