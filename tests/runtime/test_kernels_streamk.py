"""Stream-K mode of the persistent matmul: the plan (pure Python), the kernel against float32
references with tiles really split across programs, and where the chooser takes it."""

import pytest
import torch

from pipedecode.runtime import kernels
from pipedecode.runtime.kernels import reference, tiling
from pipedecode.runtime.kernels.tiling import MatmulConfig, stream_k_plan

BF16_TOL = 1e-2


def _rand(*shape, device, gen):
    return torch.randn(*shape, generator=gen).to(device, torch.bfloat16)


@pytest.mark.parametrize("tiles,programs,iters", [(128, 104, 64), (256, 104, 64), (9, 5, 7),
                                                  (1, 7, 10), (3, 40, 4), (300, 132, 224)])
def test_plan_hands_out_every_iteration_once(tiles, programs, iters):
    plan = stream_k_plan(tiles, programs, iters)
    assert plan.dp_tiles % plan.programs == 0
    assert plan.dp_tiles + plan.sk_tiles == tiles
    bounds = [plan.start(p) for p in range(plan.programs + 1)]
    assert bounds[0] == 0 and bounds[-1] == plan.sk_iters
    assert all(b - a >= 1 for a, b in zip(bounds, bounds[1:]))    # no idle program
    for it in range(plan.sk_iters):
        p = plan.owner(it)
        assert plan.start(p) <= it < plan.start(p + 1)
    # every program's range meets exactly the tiles that count it as a contributor
    met = sum(len({it // iters for it in range(plan.start(p), plan.start(p + 1))})
              for p in range(plan.programs))
    assert met == sum(plan.contributors(t) for t in range(plan.sk_tiles))


def test_plan_runs_whole_waves_then_one_to_two_waves_by_stream_k():
    assert stream_k_plan(128, 104, 64).dp_tiles == 0          # under two waves: all stream-K
    big = stream_k_plan(256, 104, 64)                         # 2.46 waves: one whole wave first
    assert (big.dp_tiles, big.sk_tiles) == (104, 152)
    assert stream_k_plan(208, 104, 64).sk_tiles == 0          # whole waves: plain kernel
    assert stream_k_plan(3, 40, 4).programs == 12             # fewer iterations than programs
    assert stream_k_plan(128, 104, 64).split_tiles > 0
    with pytest.raises(ValueError, match="positive"):
        stream_k_plan(0, 4, 4)


def _split_plan(m, n, k, cfg, sms):
    plan = stream_k_plan(-(-m // cfg.block_m) * -(-n // cfg.block_n), sms, -(-k // cfg.block_k))
    assert plan.split_tiles > 0, "the case must split tiles across programs"
    return plan


# (m, n, k, sm_count): all tiles by stream-K; whole waves then stream-K; K not whole blocks;
# one tile shared by all programs
CASES = [(37, 96, 200, 5), (64, 224, 160, 3), (20, 64, 300, 3), (16, 32, 320, 7)]
SK = MatmulConfig(block_m=16, block_n=32, block_k=32, num_warps=4, num_stages=2, stream_k=True)


@pytest.mark.parametrize("m,n,k,sms", CASES)
def test_stream_k_linear_matches_reference(m, n, k, sms, device, rel_err):
    plan = _split_plan(m, n, k, SK, sms)
    if (m, n) == (64, 224):
        assert plan.dp_tiles > 0
    gen = torch.Generator().manual_seed(1000 + m * n + k)
    x, w, bias = (_rand(*s, device=device, gen=gen) for s in ((m, k), (n, k), (n,)))
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
    kernels.linear(x, w, bias=bias, sm_count=sms, out=out, config=SK)
    assert rel_err(out.cpu(), reference.linear(x.cpu(), w.cpu(), bias=bias.cpu())) < BF16_TOL
    again = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
    kernels.linear(x, w, sm_count=sms, out=again, config=SK)     # no bias; counters reused
    assert rel_err(again.cpu(), reference.linear(x.cpu(), w.cpu())) < BF16_TOL


@pytest.mark.parametrize("m,n,k,sms", CASES[:2])
def test_stream_k_gate_up_silu_matches_reference(m, n, k, sms, device, rel_err):
    _split_plan(m, n, k, SK, sms)
    gen = torch.Generator().manual_seed(2000 + m + k)
    x, w = _rand(m, k, device=device, gen=gen), _rand(2 * n, k, device=device, gen=gen)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
    kernels.gate_up_silu(x, w, sm_count=sms, out=out, config=SK)
    assert rel_err(out.cpu(), reference.gate_up_silu(x.cpu(), w.cpu())) < BF16_TOL


def test_stream_k_needs_split_k_one():
    with pytest.raises(ValueError, match="stream_k"):
        MatmulConfig(block_m=64, block_n=64, split_k=2, stream_k=True)
    assert MatmulConfig(block_m=64, block_n=64).stream_k is False


def test_chooser_takes_stream_k_for_partial_waves():
    # 1024 x 4096 with 128 x 256 tiles = 128 tiles: one wave on 132 SMs, 1.23 on 104
    tile = tiling.TILES[0]
    dp = tiling.modelled_time_s(1024, 4096, 4096, 104, tile, 1)
    sk = tiling.modelled_time_s(1024, 4096, 4096, 104, tile, 1, stream_k=True)
    assert sk < 0.8 * dp
    assert tiling.choose_config(1024, 4096, 4096, 104).stream_k
    assert not tiling.choose_config(1024, 4096, 4096, 104, stream_k=False).stream_k


def test_chooser_keeps_whole_waves_plain():
    # 2048 x 4096 = 256 tiles of 128 x 256: two whole waves on 128 SMs, nothing to balance
    assert not tiling.choose_config(2048, 4096, 4096, 128).stream_k
    cfg = tiling.choose_config(64, 1024, 14336, 132)    # 8 tiles, 224 iterations each
    assert cfg.split_k > 1 or cfg.stream_k


def test_stream_k_leaves_given_counters_at_zero(device, rel_err):
    from pipedecode.runtime.kernels import _matmul

    m, n, k, sms = CASES[0]
    plan = _split_plan(m, n, k, SK, sms)
    gen = torch.Generator().manual_seed(77)
    x, w = _rand(m, k, device=device, gen=gen), _rand(n, k, device=device, gen=gen)
    locks = torch.zeros(plan.sk_tiles, dtype=torch.int32, device=device)
    for _ in range(2):     # the second launch relies on the first having reset them
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
        _matmul.matmul(x, w, out, None, SK, sms, pair=False, locks=locks)
        assert rel_err(out.cpu(), reference.linear(x.cpu(), w.cpu())) < BF16_TOL
        assert int(locks.abs().sum()) == 0
    with pytest.raises(ValueError, match="locks"):
        _matmul.matmul(x, w, out, None, SK, sms, pair=False, locks=locks[:1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_stream_k_llama_shapes(rel_err):
    # real concurrency: the interpreter runs programs one after the other and cannot race
    gen = torch.Generator().manual_seed(3)
    for m, n, k in ((1024, 4096, 4096), (512, 4096, 14336), (256, 6144, 4096)):
        x = _rand(m, k, device="cuda", gen=gen)
        w = (torch.randn(n, k, generator=gen) * k ** -0.5).to("cuda", torch.bfloat16)
        bias = _rand(n, device="cuda", gen=gen)
        for sms in (96, 104, 132):
            cfg = MatmulConfig(block_m=128, block_n=256, stream_k=True)
            plan = stream_k_plan(-(-m // 128) * (n // 256), sms, k // 64)
            out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
            for _ in range(3):     # a race shows as an error that moves between runs
                kernels.linear(x, w, bias=bias, sm_count=sms, out=out, config=cfg)
                err = rel_err(out.cpu(), reference.linear(x.cpu(), w.cpu(), bias=bias.cpu()))
                assert err < BF16_TOL, (m, n, k, sms, plan, err)
    x = _rand(256, 4096, device="cuda", gen=gen)
    w = (torch.randn(2 * 14336, 4096, generator=gen) * 4096 ** -0.5).to("cuda", torch.bfloat16)
    cfg = MatmulConfig(block_m=128, block_n=128, stream_k=True)
    out = kernels.gate_up_silu(x, w, sm_count=104, config=cfg)
    assert rel_err(out.cpu(), reference.gate_up_silu(x.cpu(), w.cpu())) < BF16_TOL
