"""FLOP and byte formulas against counts done by hand and by brute force."""

import itertools

import pytest

from harness.measure.metrics import attention_bytes, attention_flops, attention_pairs


@pytest.mark.parametrize("q_len,kv_len", [(1, 1), (1, 9), (3, 3), (3, 8), (5, 12)])
def test_causal_pairs_match_a_brute_force_count_of_the_bottom_right_mask(q_len, kv_len):
    visible = sum(1 for i, j in itertools.product(range(q_len), range(kv_len)) if j <= i + kv_len - q_len)
    assert attention_pairs(q_len, kv_len, causal=True) == visible
    assert attention_pairs(q_len, kv_len, causal=False) == q_len * kv_len


def test_flops_and_bytes_by_hand():
    # q=2, kv=3 causal: pairs 2*3 - 1 = 5; Hq 4, D 8: 4 * 4 * 8 * 5 = 640 FLOPs
    assert attention_flops([2], [3], num_q_heads=4, head_dim=8, causal=True) == 640
    # the published cuDNN prefill figure: B4 q 2048 ctx 2048 in 705 us is 585 TFLOP/s
    flops = attention_flops([2048] * 4, [4096] * 4, num_q_heads=32, head_dim=128, causal=True)
    assert flops / 705e-6 / 1e12 == pytest.approx(585, rel=0.01)
    # Q + O: 2 * 2 tokens * 4 heads * 8 * 2 bytes = 256; K + V: 2 * 3 * 1 * 8 * 2 = 96
    assert attention_bytes([2], [3], num_q_heads=4, num_kv_heads=1, head_dim=8, elem_bytes=2) == 352
