"""Split tail (the stream-K hybrid) of the persistent matmul: the plan (pure Python), the kernel
against float32 references with tiles really cut across programs, and where the chooser takes it."""

import pytest
import torch

from pipedecode.runtime import kernels
from pipedecode.runtime.kernels import reference, tiling
from pipedecode.runtime.kernels.tiling import MatmulConfig, tail_plan

BF16_TOL = 1e-2


def _rand(*shape, device, gen):
    return torch.randn(*shape, generator=gen).to(device, torch.bfloat16)


@pytest.mark.parametrize("tiles,programs,iters,splits", [
    (128, 104, 64, 4), (256, 104, 64, 2), (9, 5, 7, 3), (1, 7, 10, 6), (3, 40, 4, 4),
    (300, 132, 224, 8), (64, 104, 224, 3)])
def test_plan_covers_every_block_once(tiles, programs, iters, splits):
    plan = tail_plan(tiles, programs, iters, splits)
    assert plan.dp_tiles % plan.programs == 0 and plan.tail_tiles < plan.programs
    covered = [(t, i) for t in range(plan.dp_tiles) for i in range(iters)]
    for u in range(plan.tail_units):
        tile, chunk = plan.unit(u)
        lo = chunk * plan.chunk_iters       # the same K offsets for every tile: aligned
        covered += [(tile, i) for i in range(lo, min(lo + plan.chunk_iters, iters))]
    assert sorted(covered) == [(t, i) for t in range(tiles) for i in range(iters)]
    # chunk-major: the units of one chunk are consecutive, so a wave holds whole runs of them
    chunks = [plan.unit(u)[1] for u in range(plan.tail_units)]
    assert chunks == sorted(chunks)


def test_plan_splits_only_the_partial_wave():
    plan = tail_plan(128, 104, 64, 4)        # one whole wave, 24 tiles left in 4 chunks each
    assert (plan.dp_tiles, plan.tail_tiles, plan.tail_units, plan.programs) == (104, 24, 96, 104)
    assert tail_plan(208, 104, 64, 4).tail_tiles == 0          # whole waves: plain kernel
    assert tail_plan(32, 104, 224, 3).programs == 96           # fewer units than programs
    assert tail_plan(128, 104, 64, 1).split_tiles == 0
    with pytest.raises(ValueError, match="positive"):
        tail_plan(0, 4, 4, 2)


def _cfg(splits):
    return MatmulConfig(block_m=16, block_n=32, block_k=32, num_warps=4, num_stages=2,
                        tail_split=splits)


def _split_plan(m, n, k, sms, splits):
    plan = tail_plan(-(-m // 16) * -(-n // 32), sms, -(-k // 32), splits)
    assert plan.split_tiles > 0, "the case must cut tiles across programs"
    return plan


# (m, n, k, sm_count, splits): several tail waves and K not whole blocks; one tail tile in two
# chunks; one in four; one tile alone, its last chunk empty; two tail tiles in two chunks each
# (tail tiles and splits not coprime, so a unit numbering that mixed them up would miss chunks)
CASES = [(37, 96, 200, 5, 3), (64, 224, 160, 3, 2), (20, 64, 300, 3, 4), (16, 32, 320, 7, 6),
         (32, 96, 128, 4, 2)]


@pytest.mark.parametrize("m,n,k,sms,splits", CASES)
def test_split_tail_linear_matches_reference(m, n, k, sms, splits, device, rel_err):
    plan = _split_plan(m, n, k, sms, splits)
    assert plan.dp_tiles > 0 or plan.tail_tiles == 1
    gen = torch.Generator().manual_seed(1000 + m * n + k)
    x, w, bias = (_rand(*s, device=device, gen=gen) for s in ((m, k), (n, k), (n,)))
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
    kernels.linear(x, w, bias=bias, sm_count=sms, out=out, config=_cfg(splits))
    expected = reference.linear(x.cpu().float(), w.cpu().float(), bias=bias.cpu().float())
    assert rel_err(out.cpu(), expected) < BF16_TOL
    again = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
    kernels.linear(x, w, sm_count=sms, out=again, config=_cfg(splits))     # no bias
    assert rel_err(again.cpu(), reference.linear(x.cpu().float(), w.cpu().float())) < BF16_TOL


@pytest.mark.parametrize("m,n,k,sms,splits", CASES[:3])
def test_split_tail_linear_accumulates(m, n, k, sms, splits, device, rel_err):
    """out += x @ W.T: the last chunk of a split tile adds the residual once, as do whole tiles."""
    _split_plan(m, n, k, sms, splits)
    gen = torch.Generator().manual_seed(3000 + m + n + k)
    x, w = _rand(m, k, device=device, gen=gen), _rand(n, k, device=device, gen=gen)
    residual = (_rand(m, n, device=device, gen=gen).float() * 10 * k ** 0.5).to(torch.bfloat16)
    out = residual.clone()
    kernels.linear(x, w, sm_count=sms, out=out, config=_cfg(splits), accumulate=True)
    expected = residual.float().cpu() + x.float().cpu() @ w.float().cpu().t()
    assert rel_err(out.float().cpu(), expected) < BF16_TOL


@pytest.mark.parametrize("m,n,k,sms,splits", CASES[:2])
def test_split_tail_gate_up_silu_matches_reference(m, n, k, sms, splits, device, rel_err):
    _split_plan(m, n, k, sms, splits)
    gen = torch.Generator().manual_seed(2000 + m + k)
    x, w = _rand(m, k, device=device, gen=gen), _rand(2 * n, k, device=device, gen=gen)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
    kernels.gate_up_silu(x, w, sm_count=sms, out=out, config=_cfg(splits))
    assert rel_err(out.cpu(), reference.gate_up_silu(x.cpu().float(), w.cpu().float())) < BF16_TOL


def test_tail_split_needs_split_k_one():
    with pytest.raises(ValueError, match="tail_split"):
        MatmulConfig(block_m=64, block_n=64, split_k=2, tail_split=2)
    with pytest.raises(ValueError, match="tail_split"):
        MatmulConfig(block_m=64, block_n=64, tail_split=0)
    assert MatmulConfig(block_m=64, block_n=64).tail_split == 1


def test_chooser_splits_the_tail_of_partial_waves():
    # 2048 x 4096 with 128 x 256 tiles = 256 tiles: 2.46 waves on 104 SMs (measured on an H100:
    # split tail 461 µs, the plain choice 540 µs)
    tile = tiling.TILES[0]
    plain = tiling.modelled_time_s(2048, 4096, 14336, 104, tile, 1)
    tail = tiling.modelled_time_s(2048, 4096, 14336, 104, tile, 1, tail_split=2)
    assert tail < 0.9 * plain
    assert tiling.choose_config(2048, 4096, 14336, 104).tail_split > 1
    assert tiling.choose_config(2048, 4096, 14336, 104, tail=False).tail_split == 1


def test_chooser_keeps_whole_waves_plain():
    # 2048 x 4096 = 256 tiles of 128 x 256: two whole waves on 128 SMs, no tail to split
    assert tiling.choose_config(2048, 4096, 4096, 128).tail_split == 1
    assert tiling.choose_config(64, 1024, 14336, 132, tail=False).split_k > 1


def test_split_tail_leaves_given_counters_at_zero(device, rel_err):
    from pipedecode.runtime.kernels import _matmul

    m, n, k, sms, splits = CASES[0]
    plan, cfg = _split_plan(m, n, k, sms, splits), _cfg(splits)
    gen = torch.Generator().manual_seed(77)
    x, w = _rand(m, k, device=device, gen=gen), _rand(n, k, device=device, gen=gen)
    locks = torch.zeros(plan.tail_tiles, dtype=torch.int32, device=device)
    for _ in range(2):     # the second launch relies on the first having reset them
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
        _matmul.matmul(x, w, out, None, cfg, sms, pair=False, locks=locks)
        assert rel_err(out.cpu(), reference.linear(x.cpu().float(), w.cpu().float())) < BF16_TOL
        assert int(locks.abs().sum()) == 0
    with pytest.raises(ValueError, match="locks"):
        _matmul.matmul(x, w, out, None, cfg, sms, pair=False, locks=locks[:1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_split_tail_llama_shapes(rel_err):
    # real concurrency: the interpreter runs programs one after the other and cannot race
    gen = torch.Generator().manual_seed(3)
    for m, n, k in ((1024, 4096, 4096), (512, 4096, 14336), (256, 6144, 4096)):
        x = _rand(m, k, device="cuda", gen=gen)
        w = (torch.randn(n, k, generator=gen) * k ** -0.5).to("cuda", torch.bfloat16)
        bias = _rand(n, device="cuda", gen=gen)
        ref = reference.linear(x.float(), w.float(), bias=bias.float())
        for sms, splits in ((96, 2), (104, 4), (132, 3)):
            cfg = MatmulConfig(block_m=128, block_n=256, tail_split=splits)
            assert tail_plan(-(-m // 128) * (n // 256), sms, k // 64, splits).split_tiles
            out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
            for _ in range(3):     # a race shows as an error that moves between runs
                kernels.linear(x, w, bias=bias, sm_count=sms, out=out, config=cfg)
                err = rel_err(out, ref)
                assert err < BF16_TOL, (m, n, k, sms, splits, err)
    x = _rand(256, 4096, device="cuda", gen=gen)
    w = (torch.randn(2 * 14336, 4096, generator=gen) * 4096 ** -0.5).to("cuda", torch.bfloat16)
    cfg = MatmulConfig(block_m=128, block_n=128, tail_split=3)
    out = kernels.gate_up_silu(x, w, sm_count=104, config=cfg)
    assert rel_err(out, reference.gate_up_silu(x.float(), w.float())) < BF16_TOL
