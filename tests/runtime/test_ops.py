import pytest
import torch

from pipedecode.runtime import ops
from pipedecode.runtime.kernels import reference


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _paged_case(seed):
    """float32 decode and prefill inputs on a pool of 12 blocks of 8 (shuffled tables)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    tables = (torch.randperm(11, generator=gen)[:9] + 1).view(3, 3).to(torch.int32)
    return dict(q=rnd(3, 4, 16), k=rnd(3, 2, 16), v=rnd(3, 2, 16), cos=rnd(3, 16), sin=rnd(3, 16),
                pools=[rnd(12, 2, 8, 16) for _ in range(2)], tables=tables,
                positions=torch.tensor([0, 8, 20], dtype=torch.int32),
                pq=rnd(13, 4, 16), pk=rnd(13, 2, 16), pv=rnd(13, 2, 16),
                cu=torch.tensor([0, 6, 13], dtype=torch.int32),
                slots=torch.randperm(96, generator=gen)[:13])


@pytest.mark.parametrize("name", ["torch", "triton", "cublas", "hybrid"])
def test_every_kernel_set_runs_the_cache_ops_alike(name):
    """Every set takes the step's and the prefill's calls on a paged cache (RoPE + KV write and
    decode attention through block tables, the prefill's KV write and attention) and matches
    the float32 reference."""
    ks, c = ops.kernel_set(name), _paged_case(3)
    pools, expected = [p.clone() for p in c["pools"]], [p.clone() for p in c["pools"]]
    q_out = torch.empty_like(c["q"])
    ks.rope_kv_write(c["q"], c["k"], c["v"], c["cos"], c["sin"], *pools, c["positions"],
                     q_out=q_out, block_tables=c["tables"])
    q_ref = reference.rope_kv_write(c["q"], c["k"], c["v"], c["cos"], c["sin"], *expected,
                                    c["positions"], block_tables=c["tables"])
    torch.testing.assert_close(q_out, q_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(pools, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    lens = c["positions"] + 1
    out = torch.empty_like(q_out)
    ks.decode_attention(q_out, *pools, lens, out=out, sm_count=8, block_tables=c["tables"])
    torch.testing.assert_close(out, reference.decode_attention(
        q_ref, *expected, lens, block_tables=c["tables"]), rtol=1e-5, atol=1e-5)
    ks.write_kv(c["pk"], c["pv"], *pools, c["slots"])
    reference.write_kv(c["pk"], c["pv"], *expected, c["slots"])
    assert all(torch.equal(got, want) for got, want in zip(pools, expected))
    out = torch.empty_like(c["pq"])
    ks.prefill_attention(c["pq"], c["pk"], c["pv"], c["cu"], max_seqlen=7, out=out)
    torch.testing.assert_close(out, reference.prefill_attention(c["pq"], c["pk"], c["pv"], c["cu"]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sm_count", [None, 48])
def test_hybrid_linears_match_float32_on_both_paths(sm_count):
    kernels = ops.kernel_set("hybrid")
    x, w = _rand(5, 32, seed=9), _rand(40, 32, seed=10)
    out, act, scratch = torch.empty(5, 40), torch.empty(5, 20), torch.empty(5, 40)
    kernels.linear(x, w, out=out, sm_count=sm_count)
    torch.testing.assert_close(out, reference.linear(x, w), rtol=1e-5, atol=1e-5)
    kernels.gate_up_silu(x, w, scratch=scratch, out=act, sm_count=sm_count)
    torch.testing.assert_close(act, reference.gate_up_silu(x, w), rtol=1e-5, atol=1e-5)
    residual = _rand(5, 40, seed=11)
    total = residual.clone()
    kernels.linear_add(x, w, out=total, scratch=scratch, sm_count=sm_count)
    torch.testing.assert_close(total, residual + reference.linear(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["torch", "triton", "cublas", "hybrid"])
def test_linear_add_accumulates_into_out(name):
    """out += x @ W.T on every kernel set, the residual kept: the post-attention adds."""
    kernels = ops.kernel_set(name)
    x, w = _rand(6, 24, seed=12), _rand(16, 24, seed=13)
    residual = _rand(6, 16, seed=14)
    out, scratch = residual.clone(), torch.full((6, 16), float("nan"))
    assert kernels.linear_add(x, w, out=out, scratch=scratch) is out
    torch.testing.assert_close(out, residual + x @ w.t(), rtol=1e-5, atol=1e-5)


def _wide_residual_case(seed, device="cpu"):
    """bf16 x, W and a float32 residual of the product's size, so rounding the product to bf16
    first moves the sum by far more than float32 accumulation order does."""
    x = _rand(6, 64, seed=seed).bfloat16().to(device)
    w = _rand(16, 64, seed=seed + 1).bfloat16().to(device)
    residual = _rand(6, 16, seed=seed + 2).to(device)
    exact = residual + x.float() @ w.float().t()
    rounded = residual + (x @ w.t()).float()
    return x, w, residual, exact, rounded


@pytest.mark.parametrize("name", ["torch", "cublas", "hybrid"])
def test_linear_add_into_a_wider_residual_on_cpu_rounds_the_product_first(name):
    """Without a GEMM that writes float32 from bf16 (torch on CPU), the product is rounded to
    bf16 and then added: transformers' arithmetic."""
    kernels = ops.kernel_set(name)
    x, w, residual, _, rounded = _wide_residual_case(15)
    out, scratch = residual.clone(), torch.empty(6, 16, dtype=torch.bfloat16)
    kernels.linear_add(x, w, out=out, scratch=scratch)
    assert torch.equal(out, rounded)


def test_triton_linear_add_into_a_wider_residual_adds_the_float32_product():
    """The Triton matmul adds its float32 accumulator into a float32 residual, rounded once."""
    kernels = ops.kernel_set("triton")
    x, w, residual, exact, rounded = _wide_residual_case(18)
    out, scratch = residual.clone(), torch.full((6, 16), float("nan"), dtype=torch.bfloat16)
    kernels.linear_add(x, w, out=out, scratch=scratch)
    tol = 1e-5 * exact.abs().max().item()
    assert (rounded - exact).abs().max().item() > 20 * tol      # the case tells them apart
    assert (out - exact).abs().max().item() < tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["cublas", "hybrid", "triton"])
@pytest.mark.parametrize("sm_count", [None, 48])
def test_gpu_linear_add_into_a_wider_residual_adds_the_float32_product(name, sm_count):
    """On CUDA every set but torch adds the float32 product in the GEMM's epilogue (cuBLAS's
    float32 output, or the Triton matmul's accumulator): sequential and interleaved agree."""
    kernels = ops.kernel_set(name)
    x, w, residual, exact, rounded = _wide_residual_case(21, "cuda")
    out, scratch = residual.clone(), torch.full((6, 16), float("nan"), dtype=torch.bfloat16,
                                                device="cuda")
    kernels.linear_add(x, w, out=out, scratch=scratch, sm_count=sm_count)
    tol = 1e-5 * exact.abs().max().item()
    assert (rounded - exact).abs().max().item() > 20 * tol
    assert (out - exact).abs().max().item() < tol


def _lanes():
    from pipedecode.runtime.lane import coresident_lanes

    return coresident_lanes(132, 64 * 1024, 128, 4)


@pytest.mark.parametrize("name", ["triton", "cublas", "hybrid"])
def test_a_coresident_lane_takes_the_persistent_matmul_within_its_budget(name, monkeypatch):
    """Every GEMM op in a co-resident lane launches the Triton matmul on the lane's SMs with a
    tile the lane's budget holds (the interpreter computes it: the products match float32)."""
    import pipedecode.runtime.kernels as mod

    _, compute = _lanes()
    calls, real = [], mod.linear

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "linear", spy)
    kernels = ops.kernel_set(name)
    x, w = _rand(5, 32, seed=30), _rand(40, 32, seed=31)
    out, scratch = torch.empty(5, 40), torch.empty(5, 40)
    kernels.linear(x, w, out=out, lane=compute)
    torch.testing.assert_close(out, reference.linear(x, w), rtol=1e-5, atol=1e-5)
    residual = _rand(5, 40, seed=32)
    total = residual.clone()
    kernels.linear_add(x, w, out=total, scratch=scratch, lane=compute)
    torch.testing.assert_close(total, residual + reference.linear(x, w), rtol=1e-5, atol=1e-5)
    assert len(calls) == 2
    for kw in calls:
        assert kw["impl"] == "triton" and kw["sm_count"] == 132
        assert kw["config"].maxnreg is not None
        assert kw["config"].maxnreg * 32 * kw["config"].num_warps <= compute.registers
    act = torch.empty(5, 20)
    kernels.gate_up_silu(x, w, scratch=scratch, out=act, lane=compute)
    torch.testing.assert_close(act, reference.gate_up_silu(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["triton", "cublas", "hybrid"])
def test_a_coresident_lane_gives_the_attention_its_budget_and_one_program_per_sm(name,
                                                                                 monkeypatch):
    import pipedecode.runtime.kernels as mod

    attention, _ = _lanes()
    seen = {}
    monkeypatch.setattr(mod, "decode_attention", lambda *a, **kw: seen.update(kw))
    c = _paged_case(4)
    ops.kernel_set(name).decode_attention(c["q"], *c["pools"], c["positions"] + 1,
                                          out=torch.empty_like(c["q"]),
                                          block_tables=c["tables"], lane=attention)
    assert (seen["sm_count"], seen["num_ctas"], seen["smem_budget_bytes"]) == (132, 132, 65536)
    seen.clear()
    ops.kernel_set(name).decode_attention(c["q"], *c["pools"], c["positions"] + 1,
                                          out=torch.empty_like(c["q"]), sm_count=48,
                                          block_tables=c["tables"])
    assert seen["sm_count"] == 48 and "smem_budget_bytes" not in seen


def test_the_torch_set_computes_the_same_in_any_lane():
    attention, compute = _lanes()
    kernels, c = ops.kernel_set("torch"), _paged_case(5)
    x, w = _rand(5, 32, seed=33), _rand(40, 32, seed=34)
    out = torch.empty(5, 40)
    kernels.linear(x, w, out=out, lane=compute)
    assert torch.equal(out, reference.linear(x, w))
    lens = c["positions"] + 1
    att = torch.empty_like(c["q"])
    kernels.decode_attention(c["q"], *c["pools"], lens, out=att, block_tables=c["tables"],
                             lane=attention)
    assert torch.equal(att, reference.decode_attention(c["q"], *c["pools"], lens,
                                                       block_tables=c["tables"]))


def test_a_budget_sends_decode_attention_to_the_tma_kernel_only():
    import pipedecode.runtime.kernels as mod

    c = _paged_case(6)
    with pytest.raises(ValueError, match="smem_budget_bytes"):
        mod.decode_attention(c["q"], *c["pools"], c["positions"] + 1, block_tables=c["tables"],
                             smem_budget_bytes=65536, impl="triton")


def test_kernel_set_names():
    assert ops.kernel_set("auto", "cpu").name == "torch"
    with pytest.raises(ValueError):
        ops.kernel_set("fast")
