"""The softmax log-sum-exp (LSE): the fp32 reference against a naive loop, the gate's LSE check (a
planted LSE error is `wrong` while the output is right), entry-point candidates, and the adapters'
conversions to the canonical ``[T, Hq]``. The GPU tests at the end check the real backends' LSE."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from adapters.base import Adapter, Prepared
from adapters.batch import BatchSpec, make_batch
from adapters.reference import reference_attention
from harness.measure.gate import LSE_OFF, NO_LSE_NOTE, TOLERANCES, GateResult, compare, compare_lse, run_gate


def naive_lse(batch) -> torch.Tensor:
    """Per sequence, head and query, in float64: log of the sum of exp of the visible scaled scores."""
    spec = batch.spec
    lse = torch.zeros(spec.total_q, spec.num_q_heads, dtype=torch.float64)
    row = 0
    for seq, (q_len, kv_len) in enumerate(zip(spec.q_lens, spec.kv_lens)):
        for i in range(q_len):
            for head in range(spec.num_q_heads):
                kv_head = head // spec.group_size
                query = batch.q[row + i, head].double()
                scores = []
                for j in range(kv_len):
                    if spec.causal and j > i + kv_len - q_len:
                        continue
                    page = int(batch.block_table[seq, j // spec.page_size])
                    scores.append(float(query @ batch.k_cache[page, j % spec.page_size, kv_head].double()) * spec.scale)
                peak = max(scores)
                lse[row + i, head] = peak + math.log(sum(math.exp(s - peak) for s in scores))
        row += q_len
    return lse


CASES = {
    "gqa-causal-mixed": dict(grammar="2q1c9_1q6c4", page_size=4, num_q_heads=4, num_kv_heads=2),
    "mha-noncausal": dict(grammar="1q3c5_1q2c0", page_size=3, num_q_heads=2, num_kv_heads=2, causal=False),
    "mqa-page1": dict(grammar="2q4c3", page_size=1, num_q_heads=4, num_kv_heads=1),
    "single-token": dict(grammar="3q1c0", page_size=2, num_q_heads=2, num_kv_heads=1),
}


def spec_of(name: str, dtype: str = "fp32", seed: int = 5) -> BatchSpec:
    fields = dict(CASES[name])
    return BatchSpec.from_grammar(fields.pop("grammar"), head_dim=8, dtype=dtype, seed=seed, **fields)


# ------------------------------------------------------------------------------------------ reference

@pytest.mark.parametrize("name", CASES)
def test_reference_lse_matches_naive_loop(name):
    batch = make_batch(spec_of(name), "cpu")
    out, lse = reference_attention(batch, with_lse=True)
    assert lse.shape == (batch.spec.total_q, batch.spec.num_q_heads) and lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), naive_lse(batch), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, reference_attention(batch))  # the old call still gives the output alone


def test_single_token_lse_is_its_one_score():
    spec = BatchSpec.from_grammar("1q1c0", page_size=4, num_q_heads=2, num_kv_heads=2, head_dim=8, dtype="fp32")
    batch = make_batch(spec, "cpu")
    _, lse = reference_attention(batch, with_lse=True)
    page = int(batch.block_table[0, 0])
    expected = (batch.q[0] * batch.k_cache[page, 0]).sum(-1) * spec.scale
    torch.testing.assert_close(lse[0], expected)


def test_chunked_reference_lse_equals_unchunked():
    spec = BatchSpec.from_grammar("2q17c30", page_size=8, num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="fp32")
    batch = make_batch(spec, "cpu")
    _, whole = reference_attention(batch, with_lse=True)
    _, chunked = reference_attention(batch, chunk_elements=4 * 47 * 3, with_lse=True)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ the gate

class Backend(Adapter):
    """A CPU test backend returning the reference output and an LSE made by ``lse_fault``."""

    devices = ("cpu",)

    def __init__(self, name="lse-test", lse_fault=None, out_fault=None, note=""):
        self.name, self.lse_fault, self.out_fault, self.note = name, lse_fault, out_fault, note

    def available(self, device):
        return True, ""

    def prepare(self, batch):
        out = torch.empty(batch.spec.total_q, batch.spec.num_q_heads, batch.spec.head_dim, dtype=batch.q.dtype)
        reference, lse = reference_attention(batch, with_lse=True)

        def run():
            out.copy_(reference if self.out_fault is None else self.out_fault(reference))
            if self.lse_fault is None:
                return out
            return out, self.lse_fault(lse).transpose(0, 1).contiguous()  # the backend's own [Hq, T]

        return Prepared(run=run, out=out, to_lse=lambda raw: raw.transpose(0, 1), lse_note=self.note)


@pytest.fixture
def batch():
    spec = BatchSpec.from_grammar("1q1c20_2q6c10", page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=16,
                                  dtype="bf16", seed=2)
    return make_batch(spec, "cpu")


def identity(lse):
    return lse.clone()


def one_row_off(lse):
    shifted = lse.clone()
    shifted[3, 1] += 0.05  # 5x the bf16 bound, far below what the output check would notice
    return shifted


def heads_permuted(lse):
    return lse.roll(1, dims=1)


def base_two(lse):
    return lse / math.log(2)


def row_unwritten(lse):
    broken = lse.clone()
    broken[5] = float("nan")
    return broken


def test_right_lse_passes_with_its_error_recorded(batch):
    gate, prepared = run_gate(Backend(lse_fault=identity), batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "ok" and prepared is not None
    assert gate.lse_max_abs is not None and gate.lse_max_abs <= TOLERANCES["bf16"].lse_max_abs
    assert gate.lse_note == ""


@pytest.mark.parametrize("fault,words", [
    (one_row_off, "sequence 1 (rows 3..3)"),
    (heads_permuted, "sequences 0, 1, 2"),
    (base_two, "nats"),
    (row_unwritten, "non-finite in sequence 1 (rows 5..5)"),
])
def test_planted_lse_error_is_wrong_while_the_output_is_right(batch, fault, words):
    gate, prepared = run_gate(Backend(lse_fault=fault), batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "wrong" and prepared is None
    assert gate.reason.startswith(f"{LSE_OFF}:") and words in gate.reason, gate.reason
    assert gate.rel_l2 is not None and gate.rel_l2 <= TOLERANCES["bf16"].rel_l2  # the output itself was right
    assert gate.bad_elements == 0


def test_one_value_off_counts_one(batch):
    gate, _ = run_gate(Backend(lse_fault=one_row_off), batch, reference_attention(batch))  # reference LSE computed lazily
    assert gate.notes["lse_bad_values"] == 1 and gate.lse_max_abs == pytest.approx(0.05, abs=0.01)


def test_a_wrong_output_keeps_its_own_reason(batch):
    gate, _ = run_gate(Backend(lse_fault=heads_permuted, out_fault=lambda ref: ref * 1.5), batch,
                       reference_attention(batch, with_lse=True))
    assert gate.verdict == "wrong" and gate.reason.startswith("rel L2")
    assert gate.lse_max_abs > TOLERANCES["bf16"].lse_max_abs  # the LSE figure is still recorded


def test_no_lse_says_why(batch):
    gate, _ = run_gate(Backend(note="this backend has no statistics output"), batch, reference_attention(batch))
    assert gate.verdict == "ok" and gate.lse_max_abs is None
    assert gate.lse_note == "this backend has no statistics output"
    gate, _ = run_gate(Backend(), batch, reference_attention(batch))
    assert gate.lse_note == NO_LSE_NOTE


def test_lse_of_the_wrong_shape_is_wrong(batch):
    spec = batch.spec
    result = compare_lse(torch.zeros(spec.num_q_heads, spec.total_q), torch.zeros(spec.total_q, spec.num_q_heads), batch)
    assert result.verdict == "wrong" and "shape" in result.reason and result.reason.startswith(LSE_OFF)


def test_lse_bound_admits_rounding_and_rejects_a_permutation():
    """A bf16 kernel that folds the scale into Q and rounds it passes; heads read from a neighbour do not."""
    spec = BatchSpec.from_grammar("16q1c2048", page_size=16, num_q_heads=8, num_kv_heads=2, head_dim=128,
                                  dtype="bf16", seed=3)
    batch = make_batch(spec, "cpu")
    _, lse = reference_attention(batch, with_lse=True)
    prescaled = batch.spec.replace()  # the same batch, q pre-scaled and rounded to bf16
    rounded = make_batch(prescaled, "cpu")
    rounded.q.copy_((batch.q.float() * spec.scale).to(torch.bfloat16).float().div(spec.scale).to(torch.bfloat16))
    _, rounded_lse = reference_attention(rounded, with_lse=True)
    assert compare_lse(rounded_lse, lse, batch).verdict == "ok"
    assert compare_lse(lse.roll(1, dims=1), lse, batch).verdict == "wrong"
    assert all(t.lse_max_abs > 0 for t in TOLERANCES.values())


# ------------------------------------------------------------------------------------------ bad elements

def test_bad_elements_counts_the_elements_out_of_tolerance(batch):
    reference = reference_attention(batch)
    out = reference.clone()
    out[2, 1, 5] += 1.0  # one element, far beyond max abs
    result = compare(out.to(torch.bfloat16), reference, batch)
    assert result.verdict == "wrong" and result.bad_elements == 1
    assert "sequence 1 (rows 2..2)" in result.reason


def test_bad_elements_of_a_diffuse_error(batch):
    reference = reference_attention(batch)
    out = reference * 1.03  # 3 % everywhere: only the relative L2 bound fails
    result = compare(out, reference, batch)
    assert result.verdict == "wrong" and result.max_abs <= TOLERANCES["bf16"].max_abs
    assert 0 < result.bad_elements < reference.numel()


# ------------------------------------------------------------------------------------------ candidates

class TwoEntries(Backend):
    """Two entry points for the same work; ``bad`` names those that return a wrong LSE, ``raising`` those
    that raise."""

    def __init__(self, bad=(), raising=()):
        super().__init__(name="two-entries")
        self.bad, self.raising = bad, raising

    def prepare(self, batch):
        out = torch.empty(batch.spec.total_q, batch.spec.num_q_heads, batch.spec.head_dim, dtype=batch.q.dtype)
        reference, lse = reference_attention(batch, with_lse=True)

        def entry(name):
            def run():
                if name in self.raising:
                    raise RuntimeError("kernel launch failed")
                out.copy_(reference)
                return out, (heads_permuted(lse) if name in self.bad else lse).transpose(0, 1)
            return run

        return Prepared(candidates={"varlen": entry("varlen"), "decode": entry("decode")}, out=out,
                        to_lse=lambda raw: raw.transpose(0, 1))


def test_every_candidate_is_gated_and_kept_for_timing(batch):
    gate, prepared = run_gate(TwoEntries(), batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "ok" and prepared is not None
    assert prepared.run is None and set(prepared.candidates) == {"varlen", "decode"}
    assert gate.notes["candidates_ok"] == ["varlen", "decode"]
    assert set(gate.notes["candidates"]) == {"varlen", "decode"}
    gate.notes["candidates"]["decode"]["rel_l2"] = 1.25e-3
    gate.use_candidate("decode")
    assert gate.rel_l2 == 1.25e-3


@pytest.mark.parametrize("kwargs,words", [
    (dict(bad=("decode",)), f"entry point decode not used: wrong: {LSE_OFF}"),
    (dict(raising=("varlen",)), "entry point varlen not used: error: run varlen: RuntimeError: kernel launch failed"),
])
def test_a_failing_candidate_is_named_and_the_others_are_timed(batch, kwargs, words):
    """A library wrong through one entry point is a finding on the row; the cell is timed on the entry
    points that passed."""
    gate, prepared = run_gate(TwoEntries(**kwargs), batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "ok" and prepared is not None
    assert gate.reason.startswith(words), gate.reason
    failed = (kwargs.get("bad") or kwargs.get("raising"))[0]
    assert failed not in prepared.candidates and len(prepared.candidates) == 1
    assert gate.notes["candidates_failed"] == [failed]


@pytest.mark.parametrize("kwargs,verdict,words", [
    (dict(bad=("varlen", "decode")), "wrong", f"entry point varlen: {LSE_OFF}"),
    (dict(raising=("varlen", "decode")), "error", "entry point varlen: run varlen: RuntimeError: kernel launch failed"),
])
def test_when_every_candidate_fails_the_cell_fails_by_name(batch, kwargs, verdict, words):
    gate, prepared = run_gate(TwoEntries(**kwargs), batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == verdict and prepared is None
    assert gate.reason.startswith(words), gate.reason


def test_single_candidate_is_the_run():
    prepared = Prepared(candidates={"only": lambda: None})
    assert prepared.run is not None and prepared.notes["entry_point"] == "only"


def test_use_candidate_without_candidates_is_a_no_op():
    gate = GateResult("ok", rel_l2=1e-3)
    gate.use_candidate("anything")
    assert gate.rel_l2 == 1e-3


# ------------------------------------------------------------------------------------------ adapters

def test_sdpa_gather_says_it_has_no_lse(batch):
    from adapters.backends.sdpa_gather import LSE_NOTE, SdpaGatherAdapter

    spec = BatchSpec.from_grammar("1q1c20_2q6c10", page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=16,
                                  dtype="fp32", seed=2)
    fp32 = make_batch(spec, "cpu")
    gate, _ = run_gate(SdpaGatherAdapter(), fp32, reference_attention(fp32, with_lse=True))
    assert gate.verdict == "ok" and gate.lse_max_abs is None and gate.lse_note == LSE_NOTE


@pytest.fixture
def fake_flash_attn(monkeypatch):
    """A stand-in ``flash_attn`` whose two entry points (flash-attn 2.8.3's signatures) return the reference
    with the LSE in its layouts: varlen [Hq, T], with_kvcache [B, Hq, 1] (read from flash_attn_interface.py)."""
    module = types.ModuleType("flash_attn")
    module.__version__ = "2.8.3"
    calls = {}

    def current(q):
        return calls["batch"]

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None):
        out, lse = reference_attention(calls["batch"], with_lse=True)
        assert return_attn_probs
        return out.to(q.dtype), lse.transpose(0, 1).contiguous(), torch.empty(0)

    def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                                cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                                softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
        out, lse = reference_attention(calls["batch"], with_lse=True)
        assert return_softmax_lse and q.shape[1] == 1
        return out.to(q.dtype).view(q.shape), lse.unsqueeze(-1).contiguous()

    module.flash_attn_varlen_func = flash_attn_varlen_func
    module.flash_attn_with_kvcache = flash_attn_with_kvcache
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return calls


@pytest.mark.parametrize("grammar,entries", [
    ("4q1c300", {"flash_attn_varlen_func", "flash_attn_with_kvcache"}),
    ("1q1c300_1q7c20", {"flash_attn_varlen_func"}),
])
def test_flash_attn_offers_its_entry_points_with_their_lse(fake_flash_attn, grammar, entries):
    from adapters.backends.flash_attn2 import FlashAttn2Adapter

    spec = BatchSpec.from_grammar(grammar, page_size=256, num_q_heads=4, num_kv_heads=2, head_dim=16, dtype="fp16")
    batch = make_batch(spec, "cpu")
    fake_flash_attn["batch"] = batch
    gate, prepared = run_gate(FlashAttn2Adapter(), batch, reference_attention(batch, with_lse=True))
    assert gate.verdict == "ok", gate.reason
    assert gate.lse_max_abs is not None and gate.lse_max_abs < 1e-5
    if len(entries) > 1:
        assert set(gate.notes["candidates_ok"]) == entries
        assert prepared.run is None and set(prepared.candidates) == entries
    else:  # one entry point: it is the run, named in the notes
        assert prepared.run is not None and {gate.notes["entry_point"]} == entries


def test_flash_attn_lse_conversion_rejects_unknown_shapes():
    from adapters.backends.flash_attn2 import canonical_lse_of

    to_lse = canonical_lse_of(5, 4)
    assert to_lse(torch.zeros(4, 5)).shape == (5, 4)
    assert to_lse(torch.zeros(5, 4, 1)).shape == (5, 4)
    with pytest.raises(ValueError, match="softmax_lse shape"):
        to_lse(torch.zeros(5, 4))


def test_flash_attn_adapter_does_not_import_the_harness():
    import adapters.backends.flash_attn2 as module

    source = open(module.__file__, encoding="utf-8").read()
    assert "import harness" not in source and "from harness" not in source


def test_cudnn_stats_index_maps_packed_rows_to_padded_stats():
    from adapters.backends.cudnn_sdpa import gather_stats, stats_index

    cu = torch.tensor([0, 1, 4, 6], dtype=torch.int32)  # q lens 1, 3, 2
    heads, s_q = 2, 4
    stats = torch.full((3, heads, s_q, 1), float("nan"))
    expected = torch.zeros(6, heads)
    for b, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        for i in range(end - start):
            for h in range(heads):
                stats[b, h, i, 0] = expected[start + i, h] = 100 * b + 10 * h + i
    index = stats_index(cu, heads, s_q)
    assert index.shape == (6, heads)
    torch.testing.assert_close(gather_stats(stats, index), expected)


# ------------------------------------------------------------------------------------------ on the GPU

@pytest.mark.gpu
@pytest.mark.parametrize("name,grammar,page", [
    ("cudnn", "8q1c3000_2q64c500", 16), ("cudnn", "4q1c4096", 256), ("cudnn", "64q1c1024", 16),
    ("flash-attn2", "8q1c3000_2q64c500", 256), ("flash-attn2", "4q1c4096", 256), ("flash-attn2", "64q1c1024", 256),
])
def test_gpu_backends_lse_is_checked(name, grammar, page):
    """Each backend's LSE is compared with the reference. Expected from flash-attn 2.8.3's sources: a
    GQA decode batch large enough that the varlen call runs without a KV split (B64 here) gets its LSE
    back permuted ([Hkv, B, groups] written, [Hq, B] returned): that is a finding, marked xfail."""
    from adapters.base import discover

    adapter = discover()[name]
    ok, why = adapter.available(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    spec = BatchSpec.from_grammar(grammar, page_size=page, seed=1)
    batch = make_batch(spec, "cuda")
    gate, _ = run_gate(adapter, batch, reference_attention(batch, with_lse=True))
    adapter.close()
    assert gate.verdict == "ok", gate.reason
    if gate.reason.startswith(f"entry point flash_attn_varlen_func not used: wrong: {LSE_OFF}"):
        pytest.xfail(f"flash-attn 2 varlen decode LSE (timed on the other entry point): {gate.reason}")
    assert gate.lse_max_abs is not None or gate.lse_note, "neither an LSE figure nor a note"
    if gate.lse_max_abs is None:
        pytest.xfail(f"{name} returned no LSE here: {gate.lse_note}")
    assert gate.lse_max_abs <= TOLERANCES[spec.dtype].lse_max_abs
