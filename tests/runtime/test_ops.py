import pytest
import torch

from pipedecode.runtime import ops
from pipedecode.runtime.kernels import reference


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4)])
def test_torch_attention_matches_reference_and_ignores_padding(heads, kv_heads):
    q, k, v = _rand(3, heads, 16, seed=1), _rand(3, kv_heads, 12, 16, seed=2), _rand(3, kv_heads, 12, 16, seed=3)
    lens = torch.tensor([1, 7, 12], dtype=torch.int32)
    k[0, :, 1:] = 1e4                        # padding must not be read
    out = torch.empty_like(q)
    ops.torch_decode_attention(q, k, v, lens, out=out)
    torch.testing.assert_close(out, reference.decode_attention(q, k, v, lens), rtol=1e-5, atol=1e-5)


def test_torch_rope_kv_write_matches_reference():
    q, k, v = _rand(2, 4, 16, seed=4), _rand(2, 2, 16, seed=5), _rand(2, 2, 16, seed=6)
    cos, sin = _rand(2, 16, seed=7), _rand(2, 16, seed=8)
    pos = torch.tensor([3, 0], dtype=torch.int32)
    caches = [torch.zeros(2, 2, 5, 16) for _ in range(4)]
    q_out = torch.empty_like(q)
    ops.torch_rope_kv_write(q, k, v, cos, sin, caches[0], caches[1], pos, torch.arange(2),
                            q_out=q_out)
    expected = reference.rope_kv_write(q, k, v, cos, sin, caches[2], caches[3], pos)
    torch.testing.assert_close(q_out, expected)
    torch.testing.assert_close(caches[0], caches[2])
    torch.testing.assert_close(caches[1], caches[3])


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
