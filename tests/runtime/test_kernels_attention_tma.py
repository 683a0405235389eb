"""Hopper TMA decode attention: launch plan on the CPU; the Gluon kernel against the float32
reference on an sm_90 GPU (contiguous and paged caches, GQA and MHA, persistent and not)."""

import math
import random

import pytest
import torch

from pipedecode.runtime.kernels import _attention_tma as tma
from pipedecode.runtime.kernels import _attention_tma_plan as plan
from pipedecode.runtime.kernels import reference

BF16_TOL = 1e-2
KIB = 1024


def _geom(batch=4, heads=32, kv_heads=8, dim=128, ctx=4096, block_size=0):
    return plan.CacheGeometry(batch, heads, kv_heads, dim, ctx, block_size)


# ---- launch plan (CPU) -----------------------------------------------------------------------

@pytest.mark.parametrize("budget", [None, 48 * KIB, 64 * KIB, 96 * KIB, 160 * KIB])
@pytest.mark.parametrize("dim,heads", [(128, 32), (64, 32), (128, 8), (128, 256)])
def test_ring_depth_respects_the_smem_budget(budget, dim, heads):
    geom = _geom(heads=heads, kv_heads=8, dim=dim)
    cfg = plan.choose_config(geom, budget)
    used = plan.smem_bytes(cfg.block_n, cfg.num_slots, dim, geom.group_pad)
    if budget is None:      # two programs share an SM, with the driver's reservation each
        assert cfg.ctas_per_sm == 2
        assert 2 * (used + plan.CTA_RESERVED_BYTES) <= plan.SMEM_PER_SM_BYTES
    else:
        assert cfg.ctas_per_sm == 1 and used <= budget
        # one slot more would not fit: the ring is as deep as the budget allows (or capped)
        deeper = plan.smem_bytes(cfg.block_n, cfg.num_slots + 1, dim, geom.group_pad)
        assert deeper > budget or cfg.num_slots == 32
    assert cfg.num_slots >= geom.panels + 1
    assert cfg.block_n == (128 if (budget or 112 * KIB) >= 96 * KIB else 64)


def test_budgeted_program_fits_beside_a_persistent_gemm_cta():
    """The co-resident mode: one program per SM beside the Triton matmul's 128x256 CTA (8 warps
    at 204 registers, 144 KiB of shared memory in the offline sm_90 compile)."""
    gemm_regs, gemm_smem = 208 * 256, 144 * KIB          # ptxas allocates registers in 8s
    geom = _geom(batch=512, ctx=1024)
    p = plan.plan_launch(geom, plan.choose_config(geom, 64 * KIB), sm_count=132)
    assert p.num_ctas == 132 and p.registers_per_cta + gemm_regs <= 65536
    assert p.smem_bytes + gemm_smem + 2 * plan.CTA_RESERVED_BYTES <= plan.SMEM_PER_SM_BYTES


def test_too_small_a_budget_is_refused():
    with pytest.raises(ValueError, match="smem_budget_bytes"):
        plan.choose_config(_geom(), 16 * KIB)


def test_smem_formula_bounds_the_compiled_kernels():
    """Shared memory triton 3.6 reported compiling the kernel offline for sm_90
    (benchmarks/kernels/attention_tma.py --compile-only): the plan must not undercount it."""
    compiled = {(128, 6, 128, 8): 102628, (64, 7, 128, 8): 60668, (128, 6, 64, 8): 101604,
                (128, 6, 128, 16): 106852, (128, 12, 128, 8): 201028, (64, 6, 128, 32): 62052}
    for (block_n, slots, dim, group_pad), measured in compiled.items():
        planned = plan.smem_bytes(block_n, slots, dim, group_pad)
        assert measured <= planned <= measured + 2 * KIB


def _keys_read(p: plan.LaunchPlan, lens, starts):
    """{request: sorted keys attended}, checking each tile's boxes on the way."""
    seen = {b: [] for b in range(len(lens))}
    for split in range(p.num_splits):
        for b, (n, first) in enumerate(zip(lens, starts)):
            lo, hi = plan.item_range(split, p.chunk_len, n, first)
            tiles = plan.item_tiles(lo, hi, p.block_n)
            for n0 in tiles:
                valid = [k for k in range(n0, n0 + p.block_n) if lo <= k < hi]
                assert valid, "a tile without keys would leave the softmax max at -inf"
                seen[b] += valid
                for pos in plan.tile_box_positions(n0, lo, hi, p.block_n, p.box_rows):
                    # every box starts inside the item and on a box boundary: its block-table
                    # lookup (pos // block_size) stays within the request's blocks
                    assert lo // p.box_rows * p.box_rows <= pos < hi
                    assert pos % p.box_rows == 0
    return seen


@pytest.mark.parametrize("seed", range(6))
def test_split_plan_reads_every_key_exactly_once(seed):
    rng = random.Random(seed)
    block_size = rng.choice([0, 16, 32])
    batch, ctx = rng.randint(1, 9), rng.choice([300, 1024, 4096])
    geom = _geom(batch=batch, heads=rng.choice([8, 32]), kv_heads=8, ctx=ctx,
                 block_size=block_size)
    cfg = plan.choose_config(geom, rng.choice([None, 64 * KIB]))
    p = plan.plan_launch(geom, cfg, sm_count=rng.choice([8, 32, 132]))
    assert p.chunk_len % p.block_n == 0 and p.num_splits * p.chunk_len >= ctx
    assert p.num_items == p.num_splits * batch * geom.num_kv_heads
    lens = [rng.choice([1, 15, 16, 17, 127, 128, 129, rng.randint(1, ctx), ctx])
            for _ in range(batch)]
    starts = [rng.randint(0, n - 1) if rng.random() < 0.5 else 0 for n in lens]
    seen = _keys_read(p, lens, starts)
    for b in range(batch):
        assert seen[b] == list(range(starts[b], lens[b]))


def test_persistent_programs_take_every_item_once():
    geom = _geom(batch=64, ctx=1024)
    p = plan.plan_launch(geom, plan.choose_config(geom, 64 * KIB), sm_count=132)
    assert p.num_ctas == 132
    taken = sorted(w for pid in range(p.num_ctas) for w in range(pid, p.num_items, p.num_ctas))
    assert taken == list(range(p.num_items))
    once = plan.plan_launch(geom, plan.TmaAttentionConfig(persistent=False), sm_count=132)
    assert once.num_ctas == once.num_items


def test_split_count_fills_the_grid_only_where_needed():
    cfg = plan.TmaAttentionConfig()
    big = plan.plan_launch(_geom(batch=512, ctx=512), cfg, sm_count=132)
    assert big.single and big.num_ctas == 264
    one = plan.plan_launch(_geom(batch=1, ctx=4096), cfg, sm_count=132)
    assert one.num_splits == 4096 // cfg.min_chunk and one.chunk_len == cfg.min_chunk
    small = plan.plan_launch(_geom(batch=8, ctx=2048), cfg, sm_count=16)   # a 16-SM partition
    assert small.num_items >= small.num_ctas


def test_config_validation_names_the_field():
    for bad in ({"block_n": 96}, {"num_slots": 2}, {"box_rows": 12}, {"box_rows": 256},
                {"ctas_per_sm": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            plan.TmaAttentionConfig(**bad)
    with pytest.raises(ValueError, match="num_ctas"):
        plan.plan_launch(_geom(), plan.TmaAttentionConfig(), sm_count=132, num_ctas=0)


def _cpu_inputs(batch=2, heads=8, kv_heads=2, dim=128, ctx=64):
    q = torch.randn(batch, heads, dim).to(torch.bfloat16)
    k = torch.randn(batch, kv_heads, ctx, dim).to(torch.bfloat16)
    lens = torch.full((batch,), ctx, dtype=torch.int32)
    return q, k, k.clone(), lens, torch.empty_like(q)


def test_bad_inputs_are_value_errors_naming_the_argument():
    q, k, v, lens, out = _cpu_inputs()
    call = tma.decode_attention_tma
    with pytest.raises(ValueError, match="multiple of kv heads"):
        call(q[:, :3], k, v, lens, out=out[:, :3])
    with pytest.raises(ValueError, match="context_lens"):
        call(q, k, v, lens[:1], out=out)
    with pytest.raises(ValueError, match="context_lens"):
        call(q, k, v, lens.long(), out=out)
    with pytest.raises(ValueError, match="context_starts"):
        call(q, k, v, lens, out=out, context_starts=lens[:1])
    with pytest.raises(ValueError, match="out"):
        call(q, k, v, lens, out=out[:1])
    with pytest.raises(ValueError, match="block_tables"):
        call(q, k, v, lens, out=out, block_tables=torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="contiguous k_cache"):
        call(q[:1], k, v, lens[:1], out=out[:1])


def test_cpu_tensors_are_refused_with_the_reason():
    q, k, v, lens, out = _cpu_inputs()
    ok, why = tma.tma_attention_support()
    assert not ok and why                # no GPU here (or a triton whose Gluon renamed the API)
    with pytest.raises(tma.TmaAttentionUnavailableError) as info:
        tma.decode_attention_tma(q, k, v, lens, out=out)
    assert str(info.value)


@pytest.mark.parametrize("dim,block_size,dtype,match", [
    (96, 0, torch.bfloat16, "head_dim"), (128, 12, torch.bfloat16, "block size"),
    (128, 0, torch.float32, "bf16 or fp16")])
def test_unsupported_shapes_are_unavailable_not_errors(dim, block_size, dtype, match,
                                                       monkeypatch):
    """What the Triton kernel runs but this one does not: the caller can fall back."""
    monkeypatch.setattr(tma, "tma_attention_support", lambda device=None: (True, "sm_90"))
    q = torch.randn(2, 8, dim).to(dtype)
    if block_size:
        k = torch.randn(6, 2, block_size, dim).to(dtype)
        tables = torch.zeros(2, 3, dtype=torch.int32)
    else:
        k, tables = torch.randn(2, 2, 32, dim).to(dtype), None
    lens = torch.full((2,), 20, dtype=torch.int32)
    with pytest.raises(tma.TmaAttentionUnavailableError, match=match):
        tma.decode_attention_tma(q, k, k, lens, out=torch.empty_like(q), block_tables=tables)


# ---- the kernel on an sm_90 GPU --------------------------------------------------------------

def _gpu_problem():
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    ok, why = tma.tma_attention_support()
    return None if ok else why


gpu = pytest.mark.skipif(_gpu_problem() is not None, reason=str(_gpu_problem()))


def _ragged_lens(batch, ctx, block, gen):
    picks = [1, block - 1, block, block + 1, 127, 128, 129, 255, 257, ctx - 1, ctx]
    lens = [picks[i] if i < len(picks) else int(torch.randint(1, ctx + 1, (1,), generator=gen))
            for i in range(batch)]
    return torch.tensor([max(1, min(n, ctx)) for n in lens], dtype=torch.int32)


def _paged(k, v, lens, block_size, gen):
    """The contiguous cache as shuffled blocks [num_blocks, kv_heads, block_size, dim] with
    block 0 a null block; every row no request's keys use is NaN (K) or inf (V)."""
    batch, kv_heads, ctx, dim = k.shape
    per = math.ceil(ctx / block_size)
    used = [math.ceil(int(n) / block_size) for n in lens]
    total = 1 + sum(used) + 3
    order = (torch.randperm(total - 1, generator=gen) + 1).tolist()
    tables = torch.zeros(batch, per, dtype=torch.int32)
    kp = torch.full((total, kv_heads, block_size, dim), float("nan"), dtype=k.dtype)
    vp = torch.full_like(kp, float("inf"))
    for b in range(batch):
        for j in range(used[b]):
            blk = order.pop()
            tables[b, j] = blk
            n = min(block_size, int(lens[b]) - j * block_size)
            kp[blk, :, :n] = k[b, :, j * block_size:j * block_size + n]
            vp[blk, :, :n] = v[b, :, j * block_size:j * block_size + n]
    return kp, vp, tables


def _gather(kp, tables, ctx):
    """paged -> contiguous [batch, kv_heads, ctx, dim] through the block tables (the test's own
    gather, so the contiguous reference applies)."""
    block_size = kp.shape[2]
    pos = torch.arange(ctx, device=kp.device)
    blocks = tables[:, pos // block_size].long()                     # [batch, ctx]
    rows = kp.permute(0, 2, 1, 3)[blocks, pos % block_size]          # [batch, ctx, kv, dim]
    return rows.permute(0, 2, 1, 3)


CASES = [  # layout, heads, kv_heads, head_dim, persistent, budget KiB, with starts
    ("contiguous", 32, 8, 128, True, None, False),
    ("contiguous", 32, 8, 128, False, None, False),
    ("contiguous", 32, 8, 128, True, 64, False),
    ("contiguous", 8, 8, 128, True, None, False),
    ("contiguous", 8, 8, 128, False, 64, False),
    ("contiguous", 32, 8, 64, True, None, False),
    ("contiguous", 32, 8, 64, True, 64, False),
    ("contiguous", 32, 8, 128, True, None, True),
    ("contiguous", 8, 8, 128, True, 64, True),
    ("paged16", 32, 8, 128, True, None, False),
    ("paged16", 32, 8, 128, False, 64, False),
    ("paged16", 32, 8, 128, True, 64, False),
    ("paged16", 8, 8, 128, True, None, False),
    ("paged32", 32, 8, 128, True, 64, False),
    ("paged32", 32, 8, 64, True, None, False),
    ("paged32", 8, 8, 128, False, None, False),
    ("paged16", 32, 8, 128, True, 64, True),
]


def _run_case(case, sm_count, seed, stream=None):
    layout, heads, kv_heads, dim, persistent, budget_kib, with_starts = case
    gen = torch.Generator().manual_seed(seed)
    batch, ctx = 14, 4096
    block = 16 if layout == "paged16" else 32 if layout == "paged32" else 64
    q = torch.randn(batch, heads, dim, generator=gen).to(torch.bfloat16)
    k = torch.randn(batch, kv_heads, ctx, dim, generator=gen).to(torch.bfloat16)
    v = torch.randn(batch, kv_heads, ctx, dim, generator=gen).to(torch.bfloat16)
    lens = _ragged_lens(batch, ctx, block, gen)
    starts = None
    if with_starts:
        starts = (torch.rand(batch, generator=gen) * lens.float()).to(torch.int32)
        starts[0] = 0
    expected = reference.decode_attention(q.cuda().float(), k.cuda().float(), v.cuda().float(),
                                          lens.cuda(), context_starts=None if starts is None
                                          else starts.cuda())
    tables = None
    if layout == "contiguous":
        for b, n in enumerate(lens.tolist()):      # poison what must never be attended
            first = 0 if starts is None else int(starts[b])
            k[b, :, n:] = float("nan")
            v[b, :, n:] = float("inf")
            k[b, :, :first] = float("nan")
            v[b, :, :first] = float("inf")
        kc, vc = k.cuda(), v.cuda()
    else:
        kc, vc, tables = (t.cuda() for t in _paged(k, v, lens, block, gen))
        gathered = _gather(kc, tables, ctx)
        valid = torch.arange(ctx, device="cuda")[None, :] < lens.cuda()[:, None]
        assert torch.equal(gathered.transpose(1, 2)[valid], k.cuda().transpose(1, 2)[valid])
    qc, lc = q.cuda(), lens.cuda()
    sc = None if starts is None else starts.cuda()
    cfg = None if persistent else plan.TmaAttentionConfig(persistent=False)
    budget = None if budget_kib is None else budget_kib * KIB
    if cfg is not None and budget is not None:
        geom = plan.CacheGeometry(batch, heads, kv_heads, dim, ctx)
        cfg = plan.TmaAttentionConfig(**{**vars(plan.choose_config(geom, budget)),
                                         "persistent": False})
    out = torch.full_like(qc, float("nan"))
    stream = stream or torch.cuda.current_stream()
    stream.wait_stream(torch.cuda.current_stream())      # the inputs were made on this one
    with torch.cuda.stream(stream):
        tma.decode_attention_tma(qc, kc, vc, lc, out=out, block_tables=tables, context_starts=sc,
                                 sm_count=sm_count, config=cfg, smem_budget_bytes=budget)
        tma.wait_or_exit(f"decode_attention_tma {case} on {sm_count} SMs")
    return out, expected


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_matches_reference_on_the_whole_gpu(case, rel_err):
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out, expected = _run_case(case, sms, seed=CASES.index(case))
    assert torch.isfinite(out).all(), "an output element was not written (or is NaN)"
    assert rel_err(out, expected) < BF16_TOL


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", CASES[:3] + CASES[9:12], ids=lambda c: "-".join(map(str, c)))
def test_gpu_matches_reference_on_a_32_sm_partition(case, rel_err):
    from pipedecode.errors import PartitionUnavailableError
    from pipedecode.runtime import partitions

    try:
        part = partitions.make_partition(32)
    except PartitionUnavailableError as exc:
        pytest.skip(str(exc))
    out, expected = _run_case(case, part.granted_sms, seed=7, stream=part.stream)
    part.stream.synchronize()
    assert torch.isfinite(out).all()
    assert rel_err(out, expected) < BF16_TOL


@pytest.mark.gpu
@gpu
def test_gpu_split_and_single_paths_are_both_taken(rel_err):
    """One split (the kernel writes out) and many (partials merged by the combine kernel)."""
    case = ("contiguous", 32, 8, 128, True, None, False)
    geom = plan.CacheGeometry(14, 32, 8, 128, 4096)
    cfg = plan.choose_config(geom)
    assert plan.plan_launch(geom, cfg, sm_count=8).single
    assert not plan.plan_launch(geom, cfg, sm_count=132).single
    for sms in (8, 132):
        out, expected = _run_case(case, sms, seed=sms)
        assert rel_err(out, expected) < BF16_TOL


@pytest.mark.gpu
@gpu
def test_gpu_padded_rows_read_the_null_block(rel_err):
    """Padded rows (context_len 1, a table of zeros) attend to block 0's first row."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(3, 32, 128, generator=gen).to(torch.bfloat16).cuda()
    kp = torch.randn(5, 8, 16, 128, generator=gen).to(torch.bfloat16).cuda()
    vp = torch.randn(5, 8, 16, 128, generator=gen).to(torch.bfloat16).cuda()
    tables = torch.tensor([[0, 0], [3, 1], [0, 0]], dtype=torch.int32, device="cuda")
    lens = torch.tensor([1, 20, 1], dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan"))
    tma.decode_attention_tma(q, kp, vp, lens, out=out, block_tables=tables)
    tma.wait_or_exit("decode_attention_tma padded rows")
    expected = reference.decode_attention(q.float(), _gather(kp, tables, 32).float(),
                                          _gather(vp, tables, 32).float(), lens)
    assert rel_err(out, expected) < BF16_TOL
    assert torch.equal(out[0], vp[0, :, 0].repeat_interleave(4, dim=0))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_strided_cache_and_custom_scale(dtype, rel_err):
    """A view into a longer cache (stride(1) is not max_ctx x dim), fp16 as well as bf16."""
    gen = torch.Generator().manual_seed(11)
    big_k = torch.randn(5, 8, 900, 128, generator=gen).to(dtype).cuda()
    big_v = torch.randn(5, 8, 900, 128, generator=gen).to(dtype).cuda()
    k, v = big_k[:, :, :600], big_v[:, :, :600]
    q = torch.randn(5, 32, 128, generator=gen).to(dtype).cuda()
    lens = torch.tensor([600, 1, 333, 64, 65], dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan"))
    tma.decode_attention_tma(q, k, v, lens, out=out, scale=0.05)
    tma.wait_or_exit("decode_attention_tma strided cache")
    expected = reference.decode_attention(q.float(), k.float(), v.float(), lens, scale=0.05)
    assert rel_err(out, expected) < BF16_TOL


def _small_inputs(device="cpu"):
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(3, 8, 64, generator=gen).to(device)
    cache = torch.randn(3, 2, 64, 64, generator=gen).to(device)
    return q, cache, cache.clone(), torch.tensor([5, 64, 33], dtype=torch.int32, device=device)


def test_dispatch_takes_the_tma_kernel_where_it_runs(monkeypatch):
    from pipedecode.runtime import kernels

    monkeypatch.setattr(kernels, "_use_triton", lambda t: True)
    calls = []
    monkeypatch.setattr(kernels, "attention_tma_unavailable", lambda *a: None)
    monkeypatch.setattr(tma, "decode_attention_tma",
                        lambda *a, **kw: calls.append(kw["sm_count"]) or kw["out"])
    q, k, v, lens = _small_inputs()
    out = torch.empty_like(q)
    assert kernels.decode_attention(q, k, v, lens, out=out, sm_count=24) is out
    assert calls == [24]


def test_dispatch_falls_back_to_triton_and_says_why_on_a_gpu(monkeypatch):
    """On CPU tensors the Triton kernel runs in the interpreter; impl="tma" raises the reason."""
    from pipedecode.runtime import kernels

    q, k, v, lens = _small_inputs()
    got = kernels.decode_attention(q, k, v, lens)            # interpreter, no warning on CPU
    expected = reference.decode_attention(q, k, v, lens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(tma.TmaAttentionUnavailableError, match="bf16|fp16|CUDA|Gluon|triton"):
        kernels.decode_attention(q, k, v, lens, impl="tma")
    with pytest.raises(ValueError, match="impl"):
        kernels.decode_attention(q, k, v, lens, impl="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_default_dispatch_is_the_tma_kernel_on_hopper(rel_err):
    from pipedecode.runtime import kernels

    q, k, v, lens = _small_inputs("cuda")
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    out = torch.empty_like(q)
    why = kernels.attention_tma_unavailable(q, k, v, lens, out)
    if torch.cuda.get_device_capability() == (9, 0):
        assert why is None
    got = kernels.decode_attention(q, k, v, lens, out=out)
    assert rel_err(got.float(), reference.decode_attention(q.float(), k.float(), v.float(), lens)
                   ) < 1e-2
