"""Bad input is refused before any launch, with a message naming the field and its value.

Property-based: small valid specs (CPU, fp32) build batches that validate cleanly; corrupting any one
field of a valid spec or batch raises `BatchValidationError` naming that field."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adapters.base import Adapter, Prepared
from adapters.batch import NULL_PAGE, BatchSpec, PagedBatch, make_batch
from adapters.reference import reference_attention
from adapters.validation import SUPPORTED_HEAD_DIMS, BatchValidationError, validate_batch, validate_spec
from harness.cases.sweep import Case
from harness.measure.gate import run_gate

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def specs(draw) -> BatchSpec:
    """Valid small specs: 1-4 sequences, short lengths, page sizes 1..16, MHA/GQA/MQA, fp32."""
    batch_size = draw(st.integers(1, 4))
    q_lens = draw(st.lists(st.integers(1, 6), min_size=batch_size, max_size=batch_size))
    contexts = draw(st.lists(st.integers(0, 20), min_size=batch_size, max_size=batch_size))
    num_kv_heads = draw(st.integers(1, 2))
    return BatchSpec(
        q_lens=tuple(q_lens), kv_lens=tuple(q + c for q, c in zip(q_lens, contexts)),
        page_size=draw(st.sampled_from([1, 2, 3, 4, 16])), num_q_heads=num_kv_heads * draw(st.integers(1, 3)),
        num_kv_heads=num_kv_heads, head_dim=draw(st.sampled_from([32, 64])), dtype="fp32",
        causal=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def clone(batch: PagedBatch) -> PagedBatch:
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).clone()
                                         for f in dataclasses.fields(batch)
                                         if f.name != "spec" and getattr(batch, f.name) is not None})


def strided(tensor: torch.Tensor) -> torch.Tensor:
    """The same values and shape, but not contiguous (every other element of a wider buffer)."""
    wide = torch.empty(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype)
    view = wide[..., ::2]
    view.copy_(tensor)
    return view


@given(spec=specs())
@SETTINGS
def test_valid_specs_and_their_batches_validate(spec):
    validate_spec(spec)
    validate_batch(make_batch(spec))


# --- spec corruptions: (field, replacement fields, text of the bad value) ----------------------------

def _spec_corruptions(spec: BatchSpec, seq: int) -> dict[str, tuple[str, dict, str]]:
    q_len = spec.q_lens[seq]
    with_q = list(spec.q_lens)
    with_q[seq] = 0
    short_kv = list(spec.kv_lens)
    short_kv[seq] = q_len - 1
    return {
        "empty": ("q_lens", {"q_lens": (), "kv_lens": ()}, "empty batch"),
        "q_len zero": ("q_lens", {"q_lens": tuple(with_q)}, "0"),
        "kv_len < q_len": ("kv_lens", {"kv_lens": tuple(short_kv)}, f"{q_len - 1} < q_len {q_len}"),
        "kv_lens count": ("kv_lens", {"kv_lens": spec.kv_lens + (9,)}, str(len(spec.kv_lens) + 1)),
        "page_size": ("page_size", {"page_size": 0}, "0"),
        "num_kv_heads": ("num_kv_heads", {"num_kv_heads": 0}, "0"),
        "gqa ratio": ("num_q_heads", {"num_q_heads": spec.num_kv_heads + 1 if spec.num_kv_heads > 1 else 0,
                                       "num_kv_heads": spec.num_kv_heads},
                      str(spec.num_kv_heads + 1 if spec.num_kv_heads > 1 else 0)),
        "head_dim": ("head_dim", {"head_dim": 48}, "48"),
        "dtype": ("dtype", {"dtype": "int8"}, "int8"),
        "seed": ("seed", {"seed": 1.5}, "1.5"),
    }


SPEC_CORRUPTIONS = list(_spec_corruptions(BatchSpec((1,), (1,)), 0))


@pytest.mark.parametrize("corruption", SPEC_CORRUPTIONS)
@given(spec=specs(), data=st.data())
@SETTINGS
def test_spec_corruption_raises_naming_the_field(corruption, spec, data):
    seq = data.draw(st.integers(0, spec.batch_size - 1))
    field, changes, value = _spec_corruptions(spec, seq)[corruption]
    with pytest.raises(BatchValidationError) as raised:
        spec.replace(**changes)  # BatchSpec validates itself on construction
    message = str(raised.value)
    assert message.startswith(field) and raised.value.field.startswith(field), message
    assert value in message, message


# --- batch corruptions: each takes a cloned valid batch and returns (field, text of the bad value) ----

def _set(tensor: torch.Tensor, index, value) -> None:
    tensor[index] = value


def _owned_entry(batch: PagedBatch, data) -> tuple[int, int]:
    seq = data.draw(st.integers(0, batch.spec.batch_size - 1), label="seq")
    entry = data.draw(st.integers(0, batch.spec.pages_per_seq[seq] - 1), label="entry")
    return seq, entry


def page_outside_pool(batch, data):
    seq, entry = _owned_entry(batch, data)
    page = data.draw(st.sampled_from([batch.spec.num_pages, batch.spec.num_pages + 1000, -1]), label="page")
    _set(batch.block_table, (seq, entry), page)
    return "block_table", str(page)


def owned_entry_on_null_page(batch, data):
    seq, entry = _owned_entry(batch, data)
    _set(batch.block_table, (seq, entry), NULL_PAGE)
    return "block_table", f"kv_lens[{seq}] = {batch.spec.kv_lens[seq]}"


def shared_page(batch, data):
    spec = batch.spec
    owned = [(s, e) for s in range(spec.batch_size) for e in range(spec.pages_per_seq[s])]
    assume(len(owned) >= 2)
    first, second = data.draw(st.lists(st.sampled_from(owned), min_size=2, max_size=2, unique=True), label="pair")
    page = int(batch.block_table[first])
    _set(batch.block_table, second, page)
    return "block_table", str(page)


def kv_len_below_q_len(batch, data):
    seq = data.draw(st.integers(0, batch.spec.batch_size - 1), label="seq")
    _set(batch.kv_lens, seq, batch.spec.q_lens[seq] - 1)
    return "kv_lens", str(batch.spec.q_lens[seq] - 1)


def kv_len_beyond_table_width(batch, data):
    seq = data.draw(st.integers(0, batch.spec.batch_size - 1), label="seq")
    too_long = batch.block_table.shape[1] * batch.spec.page_size + 1
    _set(batch.kv_lens, seq, too_long)
    return "kv_lens", str(too_long)


def kv_len_differs_from_spec(batch, data):
    spec = batch.spec
    seq = data.draw(st.integers(0, spec.batch_size - 1), label="seq")
    kv_len = spec.kv_lens[seq]
    other = kv_len + 1 if kv_len % spec.page_size else kv_len - 1
    assume(other >= spec.q_lens[seq])
    _set(batch.kv_lens, seq, other)
    return "kv_lens", str(other)


def cu_seqlens_not_from_zero(batch, data):
    _set(batch.cu_seqlens_q, 0, 1)
    return "cu_seqlens_q", "1"


def cu_seqlens_decreasing(batch, data):
    seq = data.draw(st.integers(1, batch.spec.batch_size), label="seq")
    value = int(batch.cu_seqlens_q[seq - 1]) - 1
    _set(batch.cu_seqlens_q, seq, value)
    return "cu_seqlens_q", str(value)


def cu_seqlens_wrong_end(batch, data):
    value = batch.spec.total_q + 1
    _set(batch.cu_seqlens_q, -1, value)
    return "cu_seqlens_q", str(value)


def _replace(batch: PagedBatch, name: str, tensor: torch.Tensor) -> None:
    setattr(batch, name, tensor)


def _dtype_change(name: str, dtype: torch.dtype):
    def corrupt(batch, data):
        _replace(batch, name, getattr(batch, name).to(dtype))
        return name, str(dtype)
    corrupt.__name__ = f"{name}_dtype_{dtype}".replace("torch.", "")
    return corrupt


def _not_contiguous(name: str):
    def corrupt(batch, data):
        _replace(batch, name, strided(getattr(batch, name)))
        return name, "not contiguous"
    corrupt.__name__ = f"{name}_not_contiguous"
    return corrupt


def _other_device(name: str):
    def corrupt(batch, data):
        _replace(batch, name, getattr(batch, name).to("meta"))
        return name, "meta"
    corrupt.__name__ = f"{name}_on_another_device"
    return corrupt


def _one_row_more(name: str):
    def corrupt(batch, data):
        tensor = getattr(batch, name)
        longer = torch.cat([tensor, tensor[:1]])
        _replace(batch, name, longer)
        return name, str(tuple(longer.shape))
    corrupt.__name__ = f"{name}_wrong_shape"
    return corrupt


BATCH_CORRUPTIONS = [
    page_outside_pool, owned_entry_on_null_page, shared_page, kv_len_below_q_len, kv_len_beyond_table_width,
    kv_len_differs_from_spec, cu_seqlens_not_from_zero, cu_seqlens_decreasing, cu_seqlens_wrong_end,
    _dtype_change("q", torch.float16), _dtype_change("k_cache", torch.float64), _dtype_change("v_cache", torch.float16),
    _dtype_change("block_table", torch.int64), _dtype_change("cu_seqlens_q", torch.int64),
    _dtype_change("kv_lens", torch.int64),
    _not_contiguous("q"), _not_contiguous("k_cache"), _not_contiguous("v_cache"),
    _other_device("k_cache"), _other_device("v_cache"), _other_device("block_table"), _other_device("kv_lens"),
    *(_one_row_more(name) for name in ("q", "k_cache", "v_cache", "block_table", "cu_seqlens_q", "kv_lens")),
]


@pytest.mark.parametrize("corrupt", BATCH_CORRUPTIONS, ids=lambda corrupt: corrupt.__name__)
@given(spec=specs(), data=st.data())
@SETTINGS
def test_batch_corruption_raises_naming_the_field(corrupt, spec, data):
    batch = clone(make_batch(spec))
    field, value = corrupt(batch, data)
    with pytest.raises(BatchValidationError) as raised:
        validate_batch(batch)
    message = str(raised.value)
    assert field in message, message
    assert value in message, message


@given(spec=specs(), data=st.data())
@SETTINGS
def test_shared_pages_pass_when_allowed(spec, data):
    batch = clone(make_batch(spec))
    shared_page(batch, data)
    validate_batch(batch, allow_shared_pages=True)
    with pytest.raises(BatchValidationError, match="shared"):
        validate_batch(batch)


def test_head_dims_of_the_suite_are_accepted_and_others_named():
    for head_dim in SUPPORTED_HEAD_DIMS:
        BatchSpec((1,), (4,), num_q_heads=2, num_kv_heads=1, head_dim=head_dim)
    with pytest.raises(BatchValidationError, match=r"^head_dim: 80 is not supported"):
        Case(name="x", grammar="1q1c3", page_size=16, head_dim=80).spec()


def test_validation_error_is_a_value_error():
    with pytest.raises(ValueError, match="page_size: 0"):
        BatchSpec((1,), (1,), page_size=0)


class _CountingAdapter(Adapter):
    """Not registered: records whether the gate got as far as prepare."""

    name = "counting"
    devices = ("cpu",)

    def __init__(self):
        self.prepared = 0

    def available(self, device):
        return True, ""

    def prepare(self, batch):
        self.prepared += 1
        result = reference_attention(batch)
        return Prepared(run=lambda: result)


def test_gate_refuses_a_malformed_batch_before_prepare():
    spec = BatchSpec((2, 3), (5, 9), page_size=4, num_q_heads=2, num_kv_heads=1, head_dim=32, dtype="fp32")
    batch = make_batch(spec)
    reference = reference_attention(batch)
    adapter = _CountingAdapter()
    assert run_gate(adapter, batch, reference)[0].verdict == "ok"
    bad = clone(batch)
    bad.block_table[1, 0] = spec.num_pages + 7
    gate, prepared = run_gate(adapter, bad, reference)
    assert (gate.verdict, prepared, adapter.prepared) == ("error", None, 1)
    assert f"block_table[1, 0]: {spec.num_pages + 7}" in gate.reason and "nothing launched" in gate.reason
