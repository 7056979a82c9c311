"""scripts/peers_aot.py: the FlashInfer modules built ahead of time must carry the very name FlashInfer's
runtime looks up under ``flashinfer/data/aot`` for the adapter's call, or the prebuilt module is silently
never loaded (the row is `skipped` on the GPU machine, FLASHINFER_DISABLE_JIT).

- Without flashinfer: option parsing (an unknown variant is one line, exit status 2), and the script's
  skip table against the adapter's own ``calls`` / ``feature_refusal`` / ``supports``: a (kind, variant)
  is built iff some flashinfer row runs that module.
- With flashinfer importable (CI has none; here ``PYTHONPATH=/work/main/.peers/host``): each row's
  calls are run through the adapter's own ``_launch`` on the CPU, into FlashInfer's real wrappers
  (constructor and ``plan``), with ``JitSpec.build_and_load`` replaced by a stub that stops at the first
  module FlashInfer asks for and reports its name; that name must equal the script's. Pinned host memory
  (the wrappers' page-locked buffers) is plain memory here, no CUDA needed. Nothing is compiled: the specs
  write their generated sources into a temporary folder.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapters.backends.flashinfer import (FlashInferBatchAttentionAdapter, FlashInferCall,
                                          FlashInferFa2Adapter, FlashInferFa3Adapter, batch_scales, flashinfer_pages)
from adapters.batch import BatchSpec, make_batch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "peers_aot.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("peers_aot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peers_aot = _load_script()

ROWS = {"flashinfer-fa2": FlashInferFa2Adapter, "flashinfer-fa3": FlashInferFa3Adapter,
        "flashinfer-batch-attention": FlashInferBatchAttentionAdapter}
"""The rows whose modules are fixed by the row (flashinfer-cudnn runs cuDNN graphs, no module; the
``flashinfer`` (auto) row lets FlashInfer pick at plan time, see `call_kind`)."""
VARIANTS = [features for size in range(len(peers_aot.FEATURES) + 1)
            for features in itertools.combinations(peers_aot.FEATURES, size)]
"""Every feature set: plain, the four single features and every joined one (16)."""


def feature_spec(features: tuple[str, ...], *, decode: bool, head_dim: int = 128, dtype: str = "bf16") -> BatchSpec:
    """A small decode or mixed batch with ``features`` (per-tensor fp8 scales)."""
    fields = {"sliding_window": 64 if "window" in features else None,
              "softcap": 30.0 if "softcap" in features else None,
              "sinks": "sinks" in features, "kv_dtype": "fp8" if "fp8" in features else None}
    text = "2q1c70" if decode else "1q9c70_1q1c40"
    return BatchSpec.from_grammar(text, page_size=16, num_q_heads=8, num_kv_heads=2, head_dim=head_dim,
                                  dtype=dtype, **fields)


def call_kind(call: FlashInferCall) -> str | None:
    """The module kind (peers_aot's ``--modules``) a call loads, or None where FlashInfer picks at plan
    time: ``backend="auto"`` resolves by device, dtypes and shape (the decode wrapper to the CUDA-core
    kernel or cuDNN, the prefill and sink wrappers to fa3 or fa2), onto modules the fa2/fa3 rows use too."""
    if call.wrapper == "BatchAttention":
        return "holistic"
    backend = call.init["backend"]
    if backend not in ("fa2", "fa3"):
        return None
    if call.wrapper == "BatchDecodeWithPagedKVCacheWrapper" and not call.init.get("use_tensor_cores"):
        return "decode"
    return backend


def row_calls(features, head_dim=128, dtype="bf16"):
    """(row name, adapter, spec, call, kind) of every call a row makes for a decode and a mixed batch with
    ``features`` that it does not decline."""
    for name, cls in ROWS.items():
        adapter = cls()
        for decode in (True, False):
            spec = feature_spec(features, decode=decode, head_dim=head_dim, dtype=dtype)
            if adapter.feature_refusal(spec) or not adapter.supports(spec)[0]:
                continue
            for call in adapter.calls(spec, 0.5, 0.25):
                kind = call_kind(call)
                if kind is not None:
                    yield name, adapter, spec, call, kind


# ------------------------------------------------------------------------------------------ options

def test_an_unknown_variant_is_one_line_and_exit_status_2():
    done = subprocess.run([sys.executable, str(SCRIPT), "--list", "--variants", "plain,windw"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "unknown variant 'windw' in --variants" in lines[0] and "window, softcap, sinks, fp8" in lines[0]


@pytest.mark.parametrize("argv, words", [
    (["--list", "--variants", "window+bogus"], "unknown variant 'window+bogus'"),
    (["--list", "--variants", "window+window"], "names a feature twice"),
    (["--list", "--variants", ","], "--variants is empty"),
    (["--list", "--modules", "fa2,fa4"], "unknown --modules value 'fa4'"),
    (["--list", "--dtypes", "fp32"], "unknown --dtypes value 'fp32'"),
    (["--list", "--head-dims", "128,x"], "--head-dims '128,x'"),
    (["--variants", "window"], "--out is required (or --list)"),
])
def test_bad_options_are_one_line(argv, words, capsys):
    assert peers_aot.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and words in captured.err, captured.err


def test_variants_parse_to_feature_sets_in_one_order():
    assert peers_aot.parse_variant("plain") == ()
    assert peers_aot.parse_variant("sinks+window") == peers_aot.parse_variant("window+sinks") == ("window", "sinks")
    assert peers_aot.variant_name(("window", "softcap")) == "window+softcap"
    args = peers_aot.parse_args(["--list", "--variants", "plain,sinks+window,window+sinks,fp8"])
    assert args.variants == [(), ("window", "sinks"), ("fp8",)]
    default = peers_aot.parse_args(["--out", "x"])  # today's behaviour: plain modules of the four kinds
    assert default.variants == [()] and default.modules == ["decode", "fa2", "fa3", "holistic"]
    assert default.dtypes == ["bf16"] and default.head_dims == [128]


# ------------------------------------------------------------------------ the skip table vs the adapter

@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256])
def test_a_pair_is_built_iff_a_row_runs_its_module(head_dim):
    """The script's skips (`skip_reason`) are exactly the (kind, variant) pairs that no flashinfer row
    reaches: declined features (feature_reasons, extra_refusals), the sink wrappers replacing the
    CUDA-core decode, fa3's head dims, BatchAttention's D <= 256."""
    for features in VARIANTS:
        reached = {kind for *_, kind in row_calls(features, head_dim)}
        for kind in peers_aot.KINDS:
            reason = peers_aot.skip_reason(kind, features, head_dim)
            assert (reason is None) == (kind in reached), (kind, features, head_dim, reason)


# ------------------------------------------------------------------ names against FlashInfer's runtime

class _Requested(Exception):
    """Raised by the stub ``build_and_load``: FlashInfer asked for the module named ``args[0]``."""


@pytest.fixture(scope="module")
def flashinfer(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("flashinfer-workspace")
    with pytest.MonkeyPatch.context() as patch:
        # FlashInfer makes no spec on a machine without a GPU unless told the target (the names do not
        # depend on it); the workspace is where importing it writes its log.
        patch.setenv("FLASHINFER_CUDA_ARCH_LIST", os.environ.get("FLASHINFER_CUDA_ARCH_LIST", peers_aot.DEFAULT_ARCH))
        patch.setenv("FLASHINFER_WORKSPACE_BASE", str(scratch))
        module = pytest.importorskip("flashinfer", reason="flashinfer is not installed (PYTHONPATH=.peers/host)")
        from flashinfer.jit import core, env as jit_env

        def requested(spec):
            raise _Requested(spec.name)

        empty = torch.empty

        def unpinned_empty(*args, pin_memory=False, **kwargs):  # page-locked buffers need CUDA: plain here
            return empty(*args, **kwargs)

        patch.setattr(jit_env, "FLASHINFER_GEN_SRC_DIR", scratch / "generated")
        patch.setattr(core.JitSpec, "build_and_load", requested)
        patch.setattr(torch, "empty", unpinned_empty)
        yield module


def runtime_name(flashinfer, adapter, spec: BatchSpec, call: FlashInferCall) -> str:
    """The module FlashInfer asks for first when the adapter builds and plans ``call`` (``_launch``)."""
    batch = make_batch(spec)
    # The fa2 kernels run the module built for equal K/V strides (get_batch_prefill_module's primary; the
    # independent-stride one loads only for unequal strides): our caches have equal strides.
    assert batch.k_cache.stride() == batch.v_cache.stride()
    pages = flashinfer_pages(spec, batch.block_table, batch.cu_seqlens_q)
    out = torch.zeros_like(batch.q)
    lse = torch.zeros(spec.total_q, spec.num_q_heads, dtype=torch.float32)
    adapter._workspace = lambda device: torch.zeros(1 << 20, dtype=torch.uint8, device=device)
    call = next(made for made in adapter.calls(spec, *batch_scales(batch)) if made.name == call.name)
    with pytest.raises(_Requested) as caught:
        adapter._launch(flashinfer, call, batch, pages, out, lse)
    return caught.value.args[0]


@pytest.mark.parametrize("dtype, head_dims", [("bf16", (64, 128, 256)), ("fp16", (128,))])
def test_each_built_name_is_the_one_flashinfer_loads_for_the_adapters_call(flashinfer, dtype, head_dims):
    torch_dtype = getattr(torch, peers_aot.DTYPES[dtype])
    for head_dim in head_dims:
        reached = set()
        for features in VARIANTS:
            for row, adapter, spec, call, kind in row_calls(features, head_dim, dtype):
                wanted = runtime_name(flashinfer, adapter, spec, call)
                built = peers_aot.module_spec(kind, torch_dtype, head_dim, features).name
                assert built == wanted, (row, call.name, peers_aot.variant_name(features), head_dim, dtype)
                reached.add((kind, features))
        listed = {(kind, features) for kind, _, _, features, reason
                  in peers_aot.plan(list(peers_aot.KINDS), [dtype], [head_dim], VARIANTS) if reason is None}
        assert listed == reached  # every module built is one a row loads, and the other way round


def test_list_prints_the_names_and_builds_nothing(flashinfer, capsys):
    assert peers_aot.main(["--list", "--modules", "fa2,holistic", "--variants", "plain,window+sinks",
                           "--head-dims", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "3 modules listed, 1 skipped"
    assert [line.split()[:4] for line in lines[:-1]] == [
        ["module", "fa2", "bf16", "D64"], ["module", "holistic", "bf16", "D64"],
        ["module", "fa2", "bf16", "D64"], ["skip", "holistic", "bf16", "D64"]]
    assert lines[2].split()[-1] == "batch_prefill_attention_sink_bf16_bf16_64_64_posenc_0_f16qk_False_swa_True_fa2"
