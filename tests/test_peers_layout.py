"""CPU checks of the peer backends' conversions (FlashInfer's page indices, FA4's paged arguments and
import, the head-major pages and padded tables of JAX Pallas' paged decode) against the fp32
reference, and of the CUPTI span arithmetic of `harness.measure.profiler_timer`. Needs no GPU, flashinfer,
flash-attn-4 or JAX; the Pallas kernel itself runs in Pallas' interpreter when jax is installed."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adapters.base import discover
from adapters.batch import NULL_PAGE, BatchSpec, make_batch
from adapters.backends.fa4 import FA4Adapter, fa4_arguments, fa4_lse, sm90_kv_tile
from adapters.backends.flashinfer import (FlashInferAutoAdapter, FlashInferBatchAttentionAdapter,
                                          FlashInferCudnnAdapter, FlashInferFa2Adapter, FlashInferFa3Adapter,
                                          aot_modules, flashinfer_pages, lse_from_base2)
from adapters.backends.pallas_decode import (HEAD_MAJOR_AXES, PallasPagedDecodeAdapter, padded_block_table,
                                             pallas_plan, scaled_query)
from adapters.reference import reference_attention
from harness.measure.profiler_timer import (Activity, SpanError, busy_us, device_activities, repetition_spans,
                                            split_by_count, split_by_separator, time_external)

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    dict(text="3q1c50", page_size=16, heads=(8, 2), causal=True),           # decode
    dict(text="2q1c100_2q37c60", page_size=16, heads=(8, 2), causal=True),  # mixed
    dict(text="1q150c10_2q20c0", page_size=64, heads=(8, 1), causal=True),  # prefill, MQA
    dict(text="2q9c30_1q1c7", page_size=8, heads=(8, 2), causal=False),
    dict(text="3q1c50", page_size=1, heads=(4, 4), causal=True),
    dict(text="2q16c16", page_size=4, heads=(4, 2), causal=True),           # last pages exactly full
]


def _batch(case, dtype="fp32", head_dim=16, seed=0):
    spec = BatchSpec.from_grammar(case["text"], page_size=case["page_size"], num_q_heads=case["heads"][0],
                                  num_kv_heads=case["heads"][1], head_dim=head_dim, dtype=dtype,
                                  causal=case["causal"], seed=seed)
    return make_batch(spec)


def _attend(query, keys, values, visible):
    """query [L, Hq, D], keys/values [S, Hq, D] (heads already matched), visible bool [L, S] -> ([L, Hq, D], lse [L, Hq])."""
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = torch.einsum("lhd,shd->hls", query.float(), keys.float()) * scale
    scores = scores.masked_fill(~visible[None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1).transpose(0, 1)
    out = torch.einsum("hls,shd->lhd", torch.softmax(scores, dim=-1), values.float())
    return out, lse


# --------------------------------------------------------------------------------------------- FlashInfer

def test_flashinfer_pages_by_hand():
    spec = BatchSpec(q_lens=(1, 3), kv_lens=(5, 20), page_size=4, num_q_heads=4, num_kv_heads=2, head_dim=8,
                     dtype="fp32")
    block_table = torch.tensor([[3, 7, 0, 0, 0], [1, 2, 4, 5, 6]], dtype=torch.int32)
    pages = flashinfer_pages(spec, block_table, torch.tensor([0, 1, 4], dtype=torch.int32))
    assert pages.qo_indptr.tolist() == [0, 1, 4]
    assert pages.kv_indptr.tolist() == [0, 2, 7]
    assert pages.kv_indices.tolist() == [3, 7, 1, 2, 4, 5, 6]      # the null-page padding is left out
    assert pages.last_page_len.tolist() == [1, 4]                  # 5 = 4 + 1; 20 = 4 * 4 + 4 (full page)
    for tensor in (pages.qo_indptr, pages.kv_indptr, pages.kv_indices, pages.last_page_len):
        assert tensor.dtype == torch.int32 and tensor.device.type == "cpu" and tensor.is_contiguous()


def flashinfer_semantics_attention(batch, pages) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention as FlashInfer's docs define the paged inputs: sequence b's pages are
    ``kv_indices[kv_indptr[b]:kv_indptr[b+1]]``, its length ``(pages - 1) * page_size + last_page_len[b]``,
    its queries rows ``qo_indptr[b]:qo_indptr[b+1]``; causal masks key j for query i iff
    ``j + qo_len > kv_len + i``; query head h reads KV head ``h // (Hq // Hkv)``. LSE in base 2."""
    spec = batch.spec
    group = spec.num_q_heads // spec.num_kv_heads
    out = torch.empty(spec.total_q, spec.num_q_heads, spec.head_dim)
    lse2 = torch.empty(spec.total_q, spec.num_q_heads)
    for b in range(spec.batch_size):
        page_ids = pages.kv_indices[pages.kv_indptr[b]:pages.kv_indptr[b + 1]].long()
        kv_len = (len(page_ids) - 1) * spec.page_size + int(pages.last_page_len[b])
        rows = slice(int(pages.qo_indptr[b]), int(pages.qo_indptr[b + 1]))
        qo_len = rows.stop - rows.start
        keys = batch.k_cache[page_ids].reshape(-1, spec.num_kv_heads, spec.head_dim)[:kv_len]
        values = batch.v_cache[page_ids].reshape(-1, spec.num_kv_heads, spec.head_dim)[:kv_len]
        i = torch.arange(qo_len)[:, None]
        j = torch.arange(kv_len)[None, :]
        visible = ~(j + qo_len > kv_len + i) if spec.causal else torch.ones(qo_len, kv_len, dtype=torch.bool)
        o, lse = _attend(batch.q[rows], keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1), visible)
        out[rows], lse2[rows] = o, lse / math.log(2.0)
    return out, lse2


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['text']}-p{c['page_size']}-{'c' if c['causal'] else 'nc'}")
def test_flashinfer_pages_give_the_reference(case):
    batch = _batch(case)
    pages = flashinfer_pages(batch.spec, batch.block_table, batch.cu_seqlens_q)
    out, lse2 = flashinfer_semantics_attention(batch, pages)
    ref_out, ref_lse = reference_attention(batch, with_lse=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse_from_base2(lse2), ref_lse, rtol=1e-5, atol=1e-5)  # base 2 -> natural log


def test_flashinfer_adapters_declare_their_backends():
    assert FlashInferAutoAdapter.fi_backend == "auto" and FlashInferFa2Adapter.fi_backend == "fa2"
    assert FlashInferFa3Adapter.fi_backend == "fa3" and FlashInferCudnnAdapter.fi_backend == "cudnn"
    assert list(FlashInferFa2Adapter().decode_variants().values()) == [False, True]  # CUDA cores and tensor cores
    assert list(FlashInferFa3Adapter().decode_variants().values()) == [True]          # fa3 only with tensor cores
    assert list(FlashInferAutoAdapter().decode_variants().values()) == [False]        # FlashInfer's default


def test_flashinfer_supports_in_its_own_words():
    base = BatchSpec.from_grammar("2q1c10", page_size=16, num_q_heads=8, num_kv_heads=2, head_dim=128, dtype="bf16")
    for cls in (FlashInferAutoAdapter, FlashInferFa2Adapter, FlashInferFa3Adapter, FlashInferCudnnAdapter):
        assert cls().supports(base) == (True, "")
        ok, why = cls().supports(base.replace(dtype="fp32"))
        assert not ok and "fp16/bf16" in why
    ok, why = FlashInferFa3Adapter().supports(base.replace(head_dim=96))
    assert not ok and "head_dim" in why
    assert FlashInferFa2Adapter().supports(base.replace(head_dim=96)) == (True, "")
    assert FlashInferBatchAttentionAdapter().supports(base.replace(q_lens=(1, 7), kv_lens=(10, 20))) == (True, "")
    assert aot_modules() == []  # no flashinfer here


def test_flashinfer_worker_env_points_the_jit_at_a_toolkit(monkeypatch):
    monkeypatch.setenv("CUDA_HOME", "/opt/cuda")
    assert FlashInferFa2Adapter().worker_env("cuda") == {}   # the user's choice stands
    assert FlashInferFa2Adapter().worker_env("cpu") == {}


# -------------------------------------------------------------------------------------------------- FA4

def test_fa4_arguments_use_the_page_table_never_cu_seqlens_k():
    batch = _batch(CASES[1])
    kwargs = fa4_arguments(batch)
    assert "cu_seqlens_k" not in kwargs and "qv" not in kwargs
    assert kwargs["page_table"] is batch.block_table and kwargs["seqused_k"] is batch.kv_lens
    assert kwargs["cu_seqlens_q"] is batch.cu_seqlens_q
    assert kwargs["max_seqlen_q"] == 37 and kwargs["causal"] is True and kwargs["return_lse"] is True
    assert kwargs["softmax_scale"] == pytest.approx(1 / math.sqrt(16))
    assert batch.block_table.dtype == torch.int32 and batch.kv_lens.dtype == torch.int32


def fa4_semantics_attention(batch, kwargs) -> torch.Tensor:
    """FA4's paged varlen inputs as its docstring defines them: sequence b's keys are the first
    ``seqused_k[b]`` slots of pages ``page_table[b, :]`` of the ``[num_pages, page_size, Hkv, D]`` cache;
    its queries rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``; causal bottom-right."""
    spec = batch.spec
    group = spec.num_q_heads // spec.num_kv_heads
    out = torch.empty(spec.total_q, spec.num_q_heads, spec.head_dim)
    cu = kwargs["cu_seqlens_q"]
    for b in range(spec.batch_size):
        used = int(kwargs["seqused_k"][b])
        keys = batch.k_cache[kwargs["page_table"][b].long()].reshape(-1, spec.num_kv_heads, spec.head_dim)[:used]
        values = batch.v_cache[kwargs["page_table"][b].long()].reshape(-1, spec.num_kv_heads, spec.head_dim)[:used]
        rows = slice(int(cu[b]), int(cu[b + 1]))
        q_len = rows.stop - rows.start
        i, j = torch.arange(q_len)[:, None], torch.arange(used)[None, :]
        visible = (j <= i + used - q_len) if kwargs["causal"] else torch.ones(q_len, used, dtype=torch.bool)
        out[rows] = _attend(batch.q[rows], keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1),
                            visible)[0]
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['text']}-p{c['page_size']}")
def test_fa4_arguments_give_the_reference(case):
    batch = _batch(case)
    torch.testing.assert_close(fa4_semantics_attention(batch, fa4_arguments(batch)), reference_attention(batch),
                               rtol=1e-5, atol=1e-5)


def test_fa4_lse_and_tiles():
    raw = torch.arange(6, dtype=torch.float32).view(2, 3)  # [Hq, T]
    assert fa4_lse(raw).tolist() == [[0, 3], [1, 4], [2, 5]]
    assert sm90_kv_tile(128, True) == 128 and sm90_kv_tile(64, False) == 128
    assert sm90_kv_tile(96, False) == 144 and sm90_kv_tile(96, True) == 128 and sm90_kv_tile(256, True) == 80
    ok, why = FA4Adapter().supports(BatchSpec.from_grammar("2q1c10", dtype="fp32"))
    assert not ok and "float16, bfloat16" in why
    assert FA4Adapter().worker_env("cuda") == {"FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1"}
    assert FA4Adapter().worker_env("cpu") == {}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_fa4_loads_its_own_cute_beside_flash_attn2(tmp_path):
    """flash-attn 2's regular `flash_attn` package ships an older `flash_attn/cute`: load_fa4 must load
    flash-attn-4's files (whose absolute `flash_attn.cute.*` imports resolve there too), not the old copy."""
    fa2 = tmp_path / "fa2site"
    _write(fa2 / "flash_attn" / "__init__.py", "__version__ = '2.8.3'\nFA2 = True\n")
    _write(fa2 / "flash_attn" / "cute" / "__init__.py", "WHO = 'flash-attn 2 old cute'\n")
    fa4 = tmp_path / "fa4site" / "flash_attn" / "cute"
    _write(fa4 / "__init__.py", "from flash_attn.cute.interface import flash_attn_varlen_func\nWHO = 'fa4'\n")
    _write(fa4 / "interface.py", "from flash_attn.cute import utils\n"
                                 "def flash_attn_varlen_func(*args, **kwargs):\n    return utils.TAG\n")
    _write(fa4 / "utils.py", "TAG = 'fa4 utils'\n")
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path[:0] = [{str(fa2)!r}, {str(tmp_path / 'fa4site')!r}]
        import flash_attn.cute as naive
        assert naive.WHO == 'flash-attn 2 old cute', naive.WHO      # the trap: the old copy wins
        for name in [n for n in sys.modules if n.startswith('flash_attn')]:
            del sys.modules[name]
        from adapters.backends.fa4 import load_fa4, FA4ImportError
        module = load_fa4(Path({str(fa4)!r}))
        assert module.WHO == 'fa4' and module.flash_attn_varlen_func() == 'fa4 utils'
        import flash_attn
        assert flash_attn.FA2 and flash_attn.cute is module          # flash-attn 2 still importable
        assert load_fa4(Path({str(fa4)!r})) is module
        try:
            load_fa4(Path({str(fa2 / 'flash_attn' / 'cute')!r}))
        except FA4ImportError as error:
            assert 'already imported' in str(error)
        else:
            raise AssertionError('a second flash_attn.cute was accepted')
        print('ok')
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_fa4_adds_the_cutlass_dsl_path_a_target_install_misses(tmp_path):
    """A planted nvidia_cutlass_dsl whose .pth was not processed: the adapter puts its dsl_packages on
    sys.path. The child undoes what a real install's .pth did at start-up (a dsl_packages entry and the
    imported nvidia_cutlass_dsl; nvidia-cudnn-frontend, the [gpu] extra, pulls nvidia-cutlass-dsl in), so
    the check holds whether or not one is installed."""
    site = tmp_path / "site"
    _write(site / "nvidia_cutlass_dsl" / "__init__.py", "")
    _write(site / "nvidia_cutlass_dsl" / "dsl_packages" / "cutlass" / "__init__.py", "DSL = True\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path[:] = [p for p in sys.path if not p.rstrip('/').endswith('dsl_packages')]
        sys.modules.pop('nvidia_cutlass_dsl', None)  # the .pth imported the real one
        sys.path.insert(0, {str(site)!r})
        import importlib.util
        assert importlib.util.find_spec('cutlass') is None
        from adapters.backends.fa4 import ensure_cutlass_dsl_path
        ensure_cutlass_dsl_path()
        import cutlass
        assert cutlass.DSL and cutlass.__file__.startswith({str(site)!r})
        print('ok')
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ------------------------------------------------------------------------------------------- JAX Pallas

@pytest.mark.parametrize("page_size", [1, 4, 16, 64, 256])
@pytest.mark.parametrize("max_pages", [1, 2, 3, 7, 16, 100, 256, 300, 2048])
def test_pallas_plan_is_a_tiling_the_kernel_accepts(max_pages, page_size):
    plan = pallas_plan(max_pages, page_size)
    assert plan.width >= max_pages and plan.width == plan.k_splits * plan.pages_per_partition
    assert plan.width % plan.k_splits == 0                                          # pages_per_sequence % k_splits
    per_block = min(plan.pages_per_partition, plan.pages_per_compute_block)         # as the kernel takes it
    assert plan.pages_per_partition % per_block == 0
    for value in (plan.k_splits, plan.pages_per_partition, per_block, per_block * page_size):
        assert value & (value - 1) == 0, plan                                        # powers of two
    assert per_block * page_size >= 16                                               # tl.dot's minimum
    assert plan.k_splits <= 16 and plan.block_h % 16 == 0
    assert plan.width <= 2 * max(max_pages, plan.pages_per_compute_block * plan.k_splits)


def test_pallas_plan_keeps_the_library_defaults_where_they_fit():
    plan = pallas_plan(256, 16)  # 4k context at page 16: the defaults block_h 16, 8 pages per step, 16 splits
    assert plan.static_args() == {"block_h": 16, "pages_per_compute_block": 8, "k_splits": 16, "num_warps": 8,
                                  "num_stages": 2}
    assert plan.width == 256


def test_pallas_padded_table_and_scaled_query():
    table = padded_block_table(torch.tensor([[3, 7, 0], [1, 2, 4]], dtype=torch.int32), 4)
    assert table.tolist() == [[3, 7, 0, NULL_PAGE], [1, 2, 4, NULL_PAGE]] and table.dtype == torch.int32
    with pytest.raises(ValueError):
        padded_block_table(torch.zeros(2, 5, dtype=torch.int32), 4)
    q = torch.randn(3, 4, 8, dtype=torch.bfloat16)
    scaled = scaled_query(q, 0.125)
    assert scaled.dtype == torch.bfloat16 and torch.equal(scaled, (q.float() * 0.125).to(torch.bfloat16))


def pallas_semantics_attention(q_scaled, k_pages, v_pages, table, lengths, num_kv_heads) -> torch.Tensor:
    """What ``paged_attention`` computes, read from its source: q [B, H, D] already scaled (no scale
    inside), head-major pages [Hkv, N, P, D], keys of sequence b = pages ``table[b]`` of its KV head,
    the first ``lengths[b]`` of them, query head h on KV head ``h // (H // Hkv)``."""
    batch, heads, dim = q_scaled.shape
    group = heads // num_kv_heads
    out = torch.empty(batch, heads, dim)
    for b in range(batch):
        length = int(lengths[b])
        keys = k_pages[:, table[b].long()].reshape(num_kv_heads, -1, dim)[:, :length]    # [Hkv, S, D]
        values = v_pages[:, table[b].long()].reshape(num_kv_heads, -1, dim)[:, :length]
        keys = keys.repeat_interleave(group, 0).transpose(0, 1)                           # [S, H, D]
        values = values.repeat_interleave(group, 0).transpose(0, 1)
        scores = torch.einsum("hd,shd->hs", q_scaled[b].float(), keys.float())
        out[b] = torch.einsum("hs,shd->hd", torch.softmax(scores, -1), values.float())
    return out


@pytest.mark.parametrize("case", [c for c in CASES if set(BatchSpec.from_grammar(c["text"]).q_lens) == {1}],
                         ids=lambda c: f"{c['text']}-p{c['page_size']}")
def test_pallas_head_major_pages_give_the_reference(case):
    batch = _batch(case)
    spec = batch.spec
    plan = pallas_plan(spec.max_pages, spec.page_size)
    k_pages = batch.k_cache.permute(*HEAD_MAJOR_AXES).contiguous()  # what jnp.transpose(x, HEAD_MAJOR_AXES) makes
    v_pages = batch.v_cache.permute(*HEAD_MAJOR_AXES).contiguous()
    assert k_pages.shape == (spec.num_kv_heads, spec.num_pages, spec.page_size, spec.head_dim)
    head, slot = spec.num_kv_heads - 1, spec.page_size - 1
    assert torch.equal(k_pages[head, 3, slot], batch.k_cache[3, slot, head])
    out = pallas_semantics_attention(scaled_query(batch.q, spec.scale), k_pages, v_pages,
                                     padded_block_table(batch.block_table, plan.width), batch.kv_lens,
                                     spec.num_kv_heads)
    torch.testing.assert_close(out, reference_attention(batch), rtol=1e-5, atol=1e-5)


def test_pallas_supports_decode_only_in_its_own_words():
    adapter = PallasPagedDecodeAdapter()
    assert adapter.supports(BatchSpec.from_grammar("3q1c50", page_size=16)) == (True, "")
    ok, why = adapter.supports(BatchSpec.from_grammar("2q1c100_2q37c60", page_size=16))
    assert not ok and "decode-only" in why
    ok, why = adapter.supports(BatchSpec.from_grammar("3q1c50", page_size=16, head_dim=96))
    assert not ok and "power-of-two" in why
    ok, why = adapter.supports(BatchSpec.from_grammar("3q1c50", page_size=12))
    assert not ok and "power-of-two" in why
    assert adapter.worker_env("cuda")["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


@pytest.mark.parametrize("case", [dict(text="3q1c50", page_size=16, heads=(8, 2), causal=True),
                                  dict(text="2q1c7_1q1c33", page_size=4, heads=(4, 4), causal=True)],
                         ids=lambda c: f"{c['text']}-p{c['page_size']}")
def test_pallas_kernel_in_the_interpreter_passes_the_gate(case):
    """The real jitted Pallas kernel (interpret mode on the CPU), through DLPack, gated against the reference."""
    pytest.importorskip("jax")
    from harness.measure.gate import run_gate

    adapter = PallasPagedDecodeAdapter()
    ok, why = adapter.available(torch.device("cpu"))
    assert ok, why
    batch = _batch(case)
    result, prepared = run_gate(adapter, batch, reference_attention(batch))
    assert result.verdict == "ok", result.reason
    assert result.notes["interpret"] is True and result.notes["conversion_s"] >= 0
    assert prepared is not None and prepared.external_streams is False  # CPU: ordinary timing
    assert "returns only the output" in result.lse_note


# --------------------------------------------------------------------------------- CUPTI span arithmetic

FLUSH = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int>>"


def _record(reps, fn_kernels, start=1_000, flush_ns=500, gap=50, first_extra=()):
    """A synthetic activity record: per repetition a flush kernel, then fn's kernels back to back with
    ``gap`` ns between them; returns (activities, expected spans in us)."""
    activities, spans, t = [], [], start
    for rep in range(reps):
        activities.append(Activity(FLUSH, t, t + flush_ns))
        t += flush_ns + 10_000  # the host waits for the flush, then calls fn
        begin = t
        kernels = list(fn_kernels) + (list(first_extra) if rep == 0 else [])
        for name, duration in kernels:
            activities.append(Activity(name, t, t + duration))
            t += duration + gap
        spans.append((t - gap - begin) / 1000)
        t += 20_000
    return activities, spans


def test_spans_split_by_the_flush_kernels():
    kernels = [("loop_transpose_fusion", 1_000), ("paged_attention_block_h=16", 30_000), ("reduce_fusion", 2_000)]
    activities, expected = _record(5, kernels)
    shuffled = sorted(activities, key=lambda a: -a.start_ns)  # order of the record must not matter
    spans = repetition_spans(sorted(shuffled, key=lambda a: a.start_ns), {FLUSH}, 5)
    assert spans == pytest.approx(expected)
    assert spans[0] == pytest.approx((1_000 + 50 + 30_000 + 50 + 2_000) / 1000)
    groups = split_by_separator(activities, {FLUSH})
    assert busy_us(groups[0]) == pytest.approx(33.0)  # without the gaps


def test_spans_tolerate_a_varying_kernel_count():
    kernels = [("fusion", 1_000), ("paged_attention", 10_000)]
    activities, expected = _record(3, kernels, first_extra=[("autotune_probe", 4_000)])
    assert repetition_spans(activities, {FLUSH}, 3) == pytest.approx(expected)


def test_spans_split_by_position_when_fn_launches_the_flush_kernel_too():
    kernels = [(FLUSH, 700), ("paged_attention", 10_000)]
    activities, expected = _record(4, kernels)
    with pytest.raises(SpanError):
        repetition_spans(activities, {FLUSH}, 4, fn_names={FLUSH})           # no counts: cannot split
    spans = repetition_spans(activities, {FLUSH}, 4, separator_count=1, fn_names={FLUSH, "paged_attention"},
                             fn_count=2)
    assert spans == pytest.approx(expected)
    with pytest.raises(SpanError):
        split_by_count(activities[:-1], 1, 2)


def test_spans_refuse_a_record_with_the_wrong_repetition_count():
    activities, _ = _record(3, [("k", 1_000)])
    with pytest.raises(SpanError, match="expected 4 repetitions"):
        repetition_spans(activities, {FLUSH}, 4)


class _FakeKineto:
    def __init__(self, name, device, kind, start, end):
        self._v = (name, device, kind, start, end)

    def name(self): return self._v[0]
    def device_type(self): return self._v[1]
    def activity_type(self): return self._v[2]
    def start_ns(self): return self._v[3]
    def end_ns(self): return self._v[4]


def test_device_activities_keep_only_device_work():
    from torch.autograd import DeviceType

    events = [_FakeKineto("cudaLaunchKernel", DeviceType.CPU, "cuda_runtime", 0, 5),
              _FakeKineto("k2", DeviceType.CUDA, "kernel", 300, 400),
              _FakeKineto("Memset (Device)", DeviceType.CUDA, "gpu_memset", 100, 120),
              _FakeKineto("k1", DeviceType.CUDA, "kernel", 200, 250),
              _FakeKineto("Stream Sync", DeviceType.CUDA, "cuda_sync", 250, 260)]
    prof = SimpleNamespace(profiler=SimpleNamespace(kineto_results=SimpleNamespace(events=lambda: events)))
    assert device_activities(prof) == [Activity("Memset (Device)", 100, 120), Activity("k1", 200, 250),
                                       Activity("k2", 300, 400)]
    # without kineto results: the FunctionEvents, in microseconds
    fallback = SimpleNamespace(profiler=None, events=lambda: [
        SimpleNamespace(name="k", device_type=DeviceType.CUDA, time_range=SimpleNamespace(start=1.5, end=2.0)),
        SimpleNamespace(name="op", device_type=DeviceType.CPU, time_range=SimpleNamespace(start=0.0, end=9.0))])
    assert device_activities(fallback) == [Activity("k", 1500, 2000)]


def test_time_external_on_the_cpu_is_the_ordinary_timer():
    timing = time_external(lambda: torch.ones(8).sum(), "cpu", target_ms=2.0)
    assert timing.method == "cpu perf_counter" and timing.reps >= 20


# ------------------------------------------------------------------------------------------- discovery

def test_peer_adapters_are_discovered_and_unavailable_on_the_cpu_with_a_reason():
    adapters = discover()
    for name in ("flashinfer", "flashinfer-fa2", "flashinfer-fa3", "flashinfer-cudnn", "flashinfer-batch-attention",
                 "fa4"):
        assert name in adapters
        ok, why = adapters[name].available(torch.device("cpu"))
        assert not ok and why
        assert isinstance(adapters[name].versions(), dict)
    assert "jax-pallas-decode" in adapters
    assert isinstance(adapters["jax-pallas-decode"].available(torch.device("cpu")), tuple)


def test_discovering_the_peers_imports_none_of_their_libraries():
    code = textwrap.dedent("""
        import sys
        from adapters.base import discover
        names = sorted(discover())
        heavy = [m for m in ("flashinfer", "jax", "flash_attn", "flash_attn.cute", "cutlass", "tvm_ffi") if m in sys.modules]
        sys.stderr.write(repr((names, heavy)))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names, heavy = eval(done.stderr)  # noqa: S307 - our own repr
    assert heavy == []
    assert {"flashinfer", "flashinfer-fa2", "flashinfer-fa3", "flashinfer-cudnn", "flashinfer-batch-attention", "fa4",
            "jax-pallas-decode"} <= set(names)
