"""Persistent matmul, fused gate/up SiLU and the tile chooser against float32 references."""

import dataclasses

import pytest
import torch

from pipedecode.profiles import load_profile
from pipedecode.profiles.latency import bandwidth_bytes_per_s, flops_per_sm
from pipedecode.runtime import kernels
from pipedecode.runtime.kernels import reference, tiling
from pipedecode.runtime.kernels.tiling import MatmulConfig

BF16_TOL = 1e-2
SMALL = MatmulConfig(block_m=16, block_n=32, block_k=32, num_warps=4, num_stages=2)


def _rand(*shape, device, gen):
    return torch.randn(*shape, generator=gen).to(device, torch.bfloat16)


@pytest.mark.parametrize("m,n,k", [(1, 40, 64), (37, 96, 200), (64, 64, 32)])
@pytest.mark.parametrize("split_k", [1, 3])
def test_linear_matches_reference(m, n, k, split_k, device, rel_err):
    gen = torch.Generator().manual_seed(m * 100 + n + split_k)
    x, w, bias = _rand(m, k, device=device, gen=gen), _rand(n, k, device=device, gen=gen), \
        _rand(n, device=device, gen=gen)
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=32, split_k=split_k, num_warps=4)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
    # sm_count=2: fewer programs than units, so the persistent loop takes several turns
    kernels.linear(x, w, bias=bias, sm_count=2, out=out, config=cfg)
    expected = reference.linear(x.cpu().float(), w.cpu().float(), bias=bias.cpu().float())
    assert rel_err(out.cpu(), expected) < BF16_TOL
    no_bias = kernels.linear(x, w, sm_count=3, config=cfg)
    assert rel_err(no_bias.cpu(), reference.linear(x.cpu().float(), w.cpu().float())) < BF16_TOL


def _accumulated(x, w, bias, residual):
    """float32 residual + x @ w.T (+ bias): what `accumulate` rounds once."""
    product = x.float() @ w.float().t() + (0 if bias is None else bias.float())
    return residual.float() + product


@pytest.mark.parametrize("split_k", [1, 3])
def test_linear_accumulates_into_out(split_k, device, rel_err):
    """out += x @ W.T (+ bias) in the epilogue (split-K: in the reduction). The residual is
    ten times the product, so dropping it, or adding it twice, fails."""
    gen = torch.Generator().manual_seed(40 + split_k)
    x, w, bias = _rand(37, 200, device=device, gen=gen), _rand(96, 200, device=device, gen=gen), \
        _rand(96, device=device, gen=gen)
    residual = (_rand(37, 96, device=device, gen=gen).float() * 10 * 200 ** 0.5).to(torch.bfloat16)
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=32, split_k=split_k, num_warps=4)
    for b in (bias, None):
        out = residual.clone()
        assert kernels.linear(x, w, bias=b, sm_count=2, out=out, config=cfg,
                              accumulate=True) is out
        expected = _accumulated(x.cpu(), w.cpu(), None if b is None else b.cpu(), residual.cpu())
        assert rel_err(out.float().cpu(), expected) < BF16_TOL
    with pytest.raises(ValueError, match="accumulate"):
        kernels.linear(x, w, accumulate=True)


@pytest.mark.parametrize("split_k", [1, 2])
def test_gate_up_silu_matches_reference(split_k, device, rel_err):
    gen = torch.Generator().manual_seed(17 + split_k)
    x, w = _rand(20, 96, device=device, gen=gen), _rand(2 * 48, 96, device=device, gen=gen)
    cfg = MatmulConfig(block_m=16, block_n=32, block_k=32, split_k=split_k, num_warps=4)
    out = torch.full((20, 48), float("nan"), dtype=torch.bfloat16, device=device)
    kernels.gate_up_silu(x, w, sm_count=2, out=out, config=cfg)
    assert rel_err(out.cpu(), reference.gate_up_silu(x.cpu().float(), w.cpu().float())) < BF16_TOL


def test_linear_default_config_path(device, rel_err):
    gen = torch.Generator().manual_seed(5)
    x, w = _rand(8, 64, device=device, gen=gen), _rand(48, 64, device=device, gen=gen)
    out = kernels.linear(x, w, sm_count=4)
    assert rel_err(out.cpu(), reference.linear(x.cpu().float(), w.cpu().float())) < BF16_TOL


def test_linear_rejects_mismatched_shapes():
    x = torch.zeros(4, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="weight"):
        kernels.linear(x, torch.zeros(5, 9, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="even"):
        kernels.gate_up_silu(x, torch.zeros(5, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="sm_count"):
        kernels.linear(x, torch.zeros(5, 8, dtype=torch.bfloat16), sm_count=0)


@pytest.mark.parametrize("device_profile", ["h100", "h200"])
def test_chooser_stays_near_the_ideal_time(device_profile):
    # the candidate set must hold a choice within 1.6x of perfect scaling for decode sizes
    profile = load_profile(device_profile)
    for m, n, k in ((64, 6144, 4096), (512, 4096, 14336), (2048, 28672, 4096)):
        for sms in (32, 64, 100, 132):
            cfg = tiling.choose_config(m, n, k, sms, profile=profile)
            tile = next(t for t in tiling.TILES if t[:3] == (cfg.block_m, cfg.block_n, cfg.block_k))
            ideal = max(2 * m * n * k / (sms * flops_per_sm(profile)),
                        n * k * 2 / bandwidth_bytes_per_s(profile, sms))
            assert tiling.modelled_time_s(m, n, k, sms, tile, cfg.split_k,
                                          tail_split=cfg.tail_split,
                                          profile=profile) < 1.6 * ideal


def test_chooser_reads_the_device_rates_from_the_profile():
    """The same GEMM on a GPU twice as fast in FLOPs and bytes takes about half as long; without
    a profile, the chooser models the local one (h100 on a CPU)."""
    h100 = load_profile("h100")
    fast = dataclasses.replace(h100, peak_flops_per_s=2 * h100.peak_flops_per_s,
                               bandwidth_by_sms=tuple((s, 2 * bw) for s, bw in
                                                      h100.bandwidth_by_sms))
    tile = tiling.TILES[3]
    slow_s = tiling.modelled_time_s(64, 4096, 4096, 64, tile, 1, profile=h100)
    fast_s = tiling.modelled_time_s(64, 4096, 4096, 64, tile, 1, profile=fast)
    assert fast_s < 0.6 * slow_s
    if not torch.cuda.is_available():
        assert tiling.modelled_time_s(64, 4096, 4096, 64, tile, 1) == slow_s
        assert tiling.choose_config(64, 4096, 4096, 64) == \
            tiling.choose_config(64, 4096, 4096, 64, profile=h100)


def test_chooser_splits_k_for_few_tiles():
    cfg = tiling.choose_config(64, 1024, 14336, 132, tail=False)
    assert cfg.split_k > 1                              # 8 tiles alone would idle 124 SMs
    assert tiling.choose_config(2048, 14336, 4096, 132).split_k == 1


def test_modelled_time_grows_when_sms_shrink():
    tile = tiling.TILES[0]
    t_full = tiling.modelled_time_s(1024, 4096, 4096, 132, tile, 1)
    t_part = tiling.modelled_time_s(1024, 4096, 4096, 32, tile, 1)
    assert t_part > 2 * t_full


def test_config_validation():
    with pytest.raises(ValueError, match="split_k"):
        MatmulConfig(block_m=64, block_n=64, split_k=0)
    with pytest.raises(ValueError):
        tiling.choose_config(0, 8, 8, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_llama_shapes_against_reference(rel_err):
    gen = torch.Generator().manual_seed(1)
    for m, n, k in ((64, 6144, 4096), (512, 4096, 14336)):
        x, w = _rand(m, k, device="cuda", gen=gen), _rand(n, k, device="cuda", gen=gen)
        for sms in (32, 100, 132):
            out = kernels.linear(x, w, sm_count=sms)
            assert rel_err(out.cpu(),
                           reference.linear(x.cpu().float(), w.cpu().float())) < BF16_TOL


def test_chooser_on_a_gpu_without_a_profile_says_which_rates_it_uses(monkeypatch):
    from pipedecode.errors import ProfileError
    from pipedecode.profiles import registry

    def unknown(index=None):
        raise ProfileError("no device profile describes the GPU 'NVIDIA L4'; measure one")

    monkeypatch.setattr(registry, "local_profile", unknown)
    tiling._warn_once.cache_clear()
    tiling._choose_local.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="h100 profile's rates.*NVIDIA L4"):
            cfg = tiling.choose_config(96, 4096, 4096, 58)
        assert cfg == tiling.choose_config(96, 4096, 4096, 58, profile=load_profile("h100"))
    finally:
        tiling._choose_local.cache_clear()       # later tests choose for the real local GPU
