"""The counting rules against hand counts, and the consumers that must agree with them."""

import pytest

from pipedecode import counts
from pipedecode.models import model_shape

LLAMA3 = model_shape("llama-3-8b")   # hidden 4096, inter 14336, 32 heads, 8 kv heads, dim 128


def test_gemm_counts_multiply_adds_and_each_tensor_once():
    # y[3, 4] = x[3, 8] @ w[4, 8]^T + b[4], float32
    assert counts.gemm(3, 4, 8, 4, bias=True) == counts.Counts(2 * 3 * 4 * 8 + 12,
                                                                (24 + 32 + 12 + 4) * 4)
    assert counts.gemm(3, 4, 8, 2) == counts.Counts(192, (24 + 32 + 12) * 2)


def test_decode_attention_reads_kv_once_per_kv_head():
    # 2 sequences of 10 tokens, 4 heads over 2 kv heads, dim 16, bf16
    c = counts.attention(2, 20, 20, 4, 2, 16, 2)
    assert c.flops == 4 * 20 * 4 * 16
    assert c.bytes_moved == (2 * 20 * 2 * 16 + 2 * 2 * 4 * 16) * 2


def test_stage_bytes_by_hand_for_llama3():
    b = 2
    pre = counts.pre_attn(LLAMA3, 1).counts()
    # qkv weight 6144x4096 once; x, y rows; norm (read + write 4096) and RoPE on q and k (5120)
    assert pre.bytes_moved == b * (6144 * 4096 + 4096 + 6144 + 2 * 4096 + 2 * 5120)
    assert pre.flops == 2 * 6144 * 4096
    attn = counts.attention_stage(LLAMA3, 1, 100).counts()
    kv_row = 2 * 8 * 128 * b
    assert attn.bytes_moved == 100 * kv_row + kv_row + 2 * 32 * 128 * b
    assert attn.flops == 4 * 100 * 32 * 128


def test_a_step_is_layers_plus_head_and_micro_batches_add_weight_reads():
    one = counts.step(LLAMA3, 64, 64 * 512)
    layer = counts.layer(LLAMA3, 64, 64 * 512)
    head = 128256 * 4096
    assert one.flops == 32 * layer.flops + 2 * 64 * head
    assert one.bytes_moved == 32 * layer.bytes_moved + 2 * head
    halves = counts.step(LLAMA3, 32, 32 * 512) + counts.step(LLAMA3, 32, 32 * 512)
    weights = LLAMA3.weight_bytes_per_layer() * 32 + 2 * head
    assert halves.bytes_moved - one.bytes_moved == pytest.approx(weights, rel=1e-3)


def test_prefill_attention_is_causal():
    c = counts.prefill_attention(LLAMA3, [4, 2])
    assert c.flops == 4 * (16 / 2 + 4 / 2) * 32 * 128


def test_elementwise_and_copy():
    assert counts.elementwise([(8, 32), (1, 4)], (8, 32)) == counts.Counts(8, 68)
    assert counts.copy(10) == counts.Counts(0, 20)
    assert counts.total([counts.Counts(1, 2)] * 3) == counts.Counts(3, 6)
