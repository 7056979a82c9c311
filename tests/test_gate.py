"""The gate must catch the silent layout mistakes backends are known for, each planted on purpose."""

import pytest
import torch

from adapters.base import Adapter, Prepared, Unsupported
from adapters.batch import BatchSpec, make_batch
from adapters.reference import reference_attention
from harness.measure.gate import TOLERANCES, VERDICTS, run_gate


def top_left_causal(batch):
    """The classic mistake: query i sees keys j <= i (top-left), not j <= i + kv_len - q_len."""
    spec = batch.spec
    flipped = make_batch(spec, "cpu")
    out = torch.empty(spec.total_q, spec.num_q_heads, spec.head_dim)
    from adapters.reference import gather_sequence_kv

    row = 0
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, spec.kv_lens)):
        keys, values = gather_sequence_kv(flipped, seq)
        keys = keys.repeat_interleave(spec.group_size, 1).transpose(0, 1)
        values = values.repeat_interleave(spec.group_size, 1).transpose(0, 1)
        query = batch.q[row:row + q_len].float().transpose(0, 1)
        scores = query @ keys.transpose(1, 2) * spec.scale
        mask = torch.arange(kv_len)[None, :] > torch.arange(q_len)[:, None]
        out[row:row + q_len] = (scores.masked_fill(mask, float("-inf")).softmax(-1) @ values).transpose(0, 1)
        row += q_len
    return out


class Planted(Adapter):
    """A test backend that writes the reference with one planted fault into a caller-visible buffer."""

    devices = ("cpu",)

    def __init__(self, fault):
        self.name = f"planted-{fault.__name__}"
        self.fault = fault

    def available(self, device):
        return True, ""

    def prepare(self, batch):
        out = torch.empty(batch.spec.total_q, batch.spec.num_q_heads, batch.spec.head_dim, dtype=batch.q.dtype)

        def run():
            self.fault(batch, out)
            return out

        return Prepared(run=run, out=out)


def correct(batch, out):
    out.copy_(reference_attention(batch))


def heads_swapped(batch, out):
    out.copy_(reference_attention(batch)[:, [1, 0, *range(2, batch.spec.num_q_heads)]])


def causal_top_left(batch, out):
    out.copy_(top_left_causal(batch))


def second_sequence_offset_wrong(batch, out):
    """Batch 0 right, later sequences written one row late (a missing output ragged offset)."""
    reference = reference_attention(batch)
    start = batch.spec.q_lens[0]
    out[:start] = reference[:start]
    out[start + 1:] = reference[start:-1]
    out[start] = reference[start]


def one_row_unwritten(batch, out):
    reference = reference_attention(batch)
    out[:3] = reference[:3]
    out[4:] = reference[4:]


@pytest.fixture
def batch():
    spec = BatchSpec.from_grammar("1q1c20_2q6c10", page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=16,
                                  dtype="fp16", seed=2)
    return make_batch(spec, "cpu")


def test_correct_output_passes(batch):
    result, prepared = run_gate(Planted(correct), batch, reference_attention(batch))
    assert result.verdict == "ok" and prepared is not None
    assert result.rel_l2 <= TOLERANCES["fp16"].rel_l2


@pytest.mark.parametrize("fault,where", [
    (heads_swapped, "sequences 0, 1, 2"),
    (causal_top_left, "sequences 0, 1, 2"),
    (second_sequence_offset_wrong, "sequences 1, 2"),
    (one_row_unwritten, "sequence 1 (rows 3..3)"),
])
def test_planted_fault_is_wrong_and_located(batch, fault, where):
    result, prepared = run_gate(Planted(fault), batch, reference_attention(batch))
    assert result.verdict == "wrong", result
    assert where in result.reason
    assert prepared is None


def test_unwritten_output_is_caught_through_nan_poisoning(batch):
    result, _ = run_gate(Planted(one_row_unwritten), batch, reference_attention(batch))
    assert "unwritten or non-finite" in result.reason and result.bad_elements == 4 * 16


class Raising(Planted):
    def prepare(self, batch):
        raise self.fault


@pytest.mark.parametrize("error,verdict", [
    (Unsupported("page size 4 is not a multiple of 256"), "unsupported"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "oom"),
    (ValueError("bad stride"), "error"),
])
def test_exceptions_become_verdicts_with_their_message(batch, error, verdict):
    adapter = Raising.__new__(Raising)
    adapter.name, adapter.fault = "raising", error
    result, _ = run_gate(adapter, batch, reference_attention(batch))
    assert result.verdict == verdict and verdict in VERDICTS
    assert str(error).split(".")[0] in result.reason


def test_a_cell_this_machine_cannot_run_is_skipped_with_the_reason():
    """NotAvailable (e.g. a kernel not compiled here, with compiling switched off) is `skipped`, not a
    decline of the layout and not an error."""
    from adapters.base import NotAvailable
    from harness.measure.gate import failure_verdict

    result = failure_verdict(NotAvailable("no compiled kernel for fp16 here"), "prepare")
    assert (result.verdict, result.reason) == ("skipped", "no compiled kernel for fp16 here")
