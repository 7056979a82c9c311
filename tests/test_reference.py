"""The fp32 reference against a plain per-sequence, per-head, per-query loop in float64."""

import math

import pytest
import torch

from adapters.batch import BatchSpec, make_batch
from adapters.reference import reference_attention


def naive_attention(batch):
    """Straight from the definition: for each sequence, head and query, softmax over visible keys."""
    spec = batch.spec
    out = torch.zeros(spec.total_q, spec.num_q_heads, spec.head_dim, dtype=torch.float64)
    row = 0
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, spec.kv_lens)):
        for i in range(q_len):
            for head in range(spec.num_q_heads):
                kv_head = head // spec.group_size
                query = batch.q[row + i, head].double()
                scores, values = [], []
                for j in range(kv_len):
                    if spec.causal and j > i + kv_len - q_len:
                        continue
                    page = int(batch.block_table[seq, j // spec.page_size])
                    key = batch.k_cache[page, j % spec.page_size, kv_head].double()
                    scores.append(float(query @ key) * spec.scale)
                    values.append(batch.v_cache[page, j % spec.page_size, kv_head].double())
                peak = max(scores)
                weights = [math.exp(s - peak) for s in scores]
                total = sum(weights)
                out[row + i, head] = sum(w / total * v for w, v in zip(weights, values))
        row += q_len
    return out


CASES = {
    "gqa-causal-mixed": dict(grammar="2q1c9_1q6c4", page_size=4, num_q_heads=4, num_kv_heads=2),
    "mha-noncausal": dict(grammar="1q3c5_1q2c0", page_size=3, num_q_heads=2, num_kv_heads=2, causal=False),
    "mqa-page1": dict(grammar="2q4c3", page_size=1, num_q_heads=4, num_kv_heads=1),
    "single-token": dict(grammar="3q1c0", page_size=2, num_q_heads=2, num_kv_heads=1),
}


@pytest.mark.parametrize("name", CASES)
def test_reference_matches_naive_loop(name):
    fields = dict(CASES[name])
    spec = BatchSpec.from_grammar(fields.pop("grammar"), head_dim=8, dtype="fp32", seed=5, **fields)
    batch = make_batch(spec, "cpu")
    torch.testing.assert_close(reference_attention(batch).double(), naive_attention(batch), rtol=1e-5, atol=1e-5)


def test_chunked_reference_equals_unchunked():
    spec = BatchSpec.from_grammar("2q17c30", page_size=8, num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="fp32")
    batch = make_batch(spec, "cpu")
    whole = reference_attention(batch)
    chunked = reference_attention(batch, chunk_elements=4 * 47 * 3)  # three query rows at a time
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_single_token_sees_only_itself():
    """q_len == kv_len == 1: the output is the one value vector."""
    spec = BatchSpec.from_grammar("1q1c0", page_size=4, num_q_heads=2, num_kv_heads=2, head_dim=8, dtype="fp32")
    batch = make_batch(spec, "cpu")
    page = int(batch.block_table[0, 0])
    torch.testing.assert_close(reference_attention(batch)[0], batch.v_cache[page, 0])
