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


def test_kernel_set_names():
    assert ops.kernel_set("auto", "cpu").name == "torch"
    with pytest.raises(ValueError):
        ops.kernel_set("fast")
