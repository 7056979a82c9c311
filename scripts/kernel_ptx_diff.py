#!/usr/bin/env python3
"""Compile the Triton paged-attention kernels of two source trees for sm_90 on a machine without a
GPU and compare their PTX and ptxas register/spill reports, configuration by configuration.

    python scripts/kernel_ptx_diff.py --base 73a1f9f [--head WORKTREE|REV] [--triton-path DIR]
                                      [--configs NAME ...] [--out DIR] [--keep-going]
    python scripts/kernel_ptx_diff.py --report [--configs ...]      # registers and spills of one tree

``--base`` and ``--head`` are git revisions (``WORKTREE``, the default head, is the checkout as it
is; a directory stands for the ``kernels/`` folder inside it); their ``kernels/`` folders are exported to a temporary directory and each is compiled in its
own subprocess. ``--triton-path`` puts another triton first on ``sys.path`` (e.g. triton 3.6
installed with ``pip install --target DIR triton==3.6.0``: the GPU machine's version).

For each configuration (a batch shape planned for a 132-SM H100/H200 with TMA and programmatic
dependent launch, ``CONFIGS`` below) both kernels (attention, and the split merge where the plan
splits keys) are specialised exactly as ``JITFunction.run`` would for those arguments and compiled
with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 64))``. PTX is compared after
dropping debug information (``.loc``, ``.file``, the ``$L__tmp`` labels that only the
``.debug_*`` sections use, those sections), which moves with the source lines and helper structure. Three columns per kernel:

* ``as-is``: base and head as the launcher specialises them;
* ``retyped``: the base compiled with the parameter types of the head (where the head declares a
  parameter's type, e.g. ``stride_q_t: tl.int64``, the base gets that type instead of the one its
  value gives): identical PTX here means the change of types is the only change;
* registers and spill bytes from ``ptxas -v`` (the ptxas triton bundles, the flags triton uses).

Per-config overrides of launcher arguments (``OFFSETS_32=False``, ``WRITE_LSE=...``) reach paths
that the shapes alone do not; an override names an argument that a tree without it ignores.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GQA = dict(num_q_heads=32, num_kv_heads=8)
CONFIGS: dict[str, dict] = {
    # name: batch (q_lens x B, kv_len), page size, head dim, dtype, causal, overrides of launcher args
    "decode-d128-p16-split": dict(batch=16, q_len=1, kv_len=4096, page=16, head_dim=128),
    "decode-d128-p256-few": dict(batch=1, q_len=1, kv_len=16384, page=256, head_dim=128),
    "decode-d128-p256-unsplit": dict(batch=64, q_len=1, kv_len=4096, page=256, head_dim=128),
    "short-d128-p16": dict(batch=8, q_len=8, kv_len=1024, page=16, head_dim=128),
    "long-d128-p16-r128": dict(batch=4, q_len=2048, kv_len=2048, page=16, head_dim=128),
    "long-d128-p256-tma-r128": dict(batch=4, q_len=2048, kv_len=2048, page=256, head_dim=128),
    "long-d128-p256-tma-r128-fp16-full": dict(batch=4, q_len=2048, kv_len=2048, page=256, head_dim=128,
                                             dtype="fp16", causal=False),
    "long-few-d128-p256-tma": dict(batch=1, q_len=512, kv_len=1024, page=256, head_dim=128),
    "long-d128-p256-chunked-split": dict(batch=1, q_len=64, kv_len=32768, page=256, head_dim=128),
    "long-d128-p16-offsets64": dict(batch=4, q_len=2048, kv_len=2048, page=16, head_dim=128,
                                    overrides={"OFFSETS_32": False}),
    "decode-d64-p16-split": dict(batch=16, q_len=1, kv_len=4096, page=16, head_dim=64),
    "long-d64-p16": dict(batch=4, q_len=2048, kv_len=2048, page=16, head_dim=64),
    "decode-d256-p16-split": dict(batch=16, q_len=1, kv_len=4096, page=16, head_dim=256),
    "long-d256-p16": dict(batch=4, q_len=2048, kv_len=2048, page=16, head_dim=256),
    "long-d256-p256": dict(batch=4, q_len=2048, kv_len=2048, page=256, head_dim=256),
    "short-d256-p16-split": dict(batch=8, q_len=8, kv_len=1024, page=16, head_dim=256),
    "long-d256-p256-chunked-split": dict(batch=1, q_len=64, kv_len=32768, page=256, head_dim=256),
}
LSE_CONFIGS: dict[str, dict] = {
    f"{name}-lse": dict(CONFIGS[name], lse=True)
    for name in ("decode-d128-p16-split", "decode-d128-p256-unsplit", "long-d128-p256-tma-r128",
                 "long-few-d128-p256-tma", "long-d64-p16", "long-d256-p16")
}
"""The same launches with the LSE output on (``--configs lse``; for trees that have it)."""


def _candidates() -> dict[str, dict]:
    """Tile alternatives for head dims 64 and 256 (and the table's own entries) in each query bucket,
    pages 16 and 256 (TMA ones at 256 only), for register / spill / shared-memory reports
    (``--configs candidates``): the groundwork for a GPU tuning session."""
    shapes = {"long": dict(batch=4, q_len=2048, kv_len=2048), "short": dict(batch=8, q_len=8, kv_len=1024),
              "decode": dict(batch=16, q_len=1, kv_len=4096)}
    splits = {"long": dict(split_programs_per_sm=2, min_split_keys=4096),
              "short": dict(split_programs_per_sm=4, min_split_keys=512),
              "decode": dict(split_programs_per_sm=3, min_split_keys=256)}
    tiles = {  # (block_m, block_n, num_warps, num_stages[, max_registers]); the table's entry first
        (64, "long"): [(128, 64, 4, 3), (128, 64, 4, 2), (128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2),
                       (64, 64, 4, 3), (64, 128, 4, 2), (128, 32, 4, 3)],
        (64, "short"): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 128, 4, 2)],
        (64, "decode"): [(16, 64, 4, 3), (16, 64, 4, 2), (16, 128, 4, 2), (16, 128, 4, 3)],
        (256, "long"): [(128, 32, 8, 2), (128, 32, 8, 3), (128, 64, 8, 2), (128, 16, 8, 2), (64, 32, 4, 2),
                        (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 8, 2),
                        # 64-row tiles over 8 warps hold a 64 x 256 accumulator in 64 registers a
                        # thread, as the D=128 winner's 128 x 128 one: capped at 128, two per SM
                        (64, 32, 8, 2, 128), (64, 32, 8, 3, 128), (64, 64, 8, 2, 128), (64, 16, 8, 3, 128)],
        (256, "short"): [(64, 16, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2), (64, 32, 8, 2)],
        (256, "decode"): [(16, 32, 4, 3), (16, 32, 4, 2), (16, 64, 4, 2), (16, 64, 8, 2), (16, 128, 8, 2)],
    }
    found = {}
    for (head_dim, bucket), rows in tiles.items():
        for page in (16, 256):
            for block_m, block_n, warps, stages, *cap in rows:
                for tma in (False, True):
                    if tma and (page != 256 or bucket == "decode"):
                        continue
                    registers = cap[0] if cap else 0
                    label = (f"M{block_m}-N{block_n}-w{warps}-s{stages}{'-tma' if tma else ''}"
                             f"{f'-r{registers}' if registers else ''}")
                    found[f"cand-d{head_dim}-{bucket}-p{page}-{label}"] = dict(
                        shapes[bucket], page=page, head_dim=head_dim,
                        config=dict(block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages,
                                    use_tma=tma, max_registers=registers, **splits[bucket]))
    for name in ("long-d64-p16", "long-d256-p16", "decode-d256-p16-split"):
        found[f"cand-fp16-{name}"] = dict(CONFIGS[name], dtype="fp16")
    # the merge kernel of split 64- and 128-row D=256 tiles, at more warps than the launcher's 4
    chunked = dict(batch=1, q_len=64, kv_len=32768, page=256, head_dim=256)
    for warps in (4, 8, 16, 32):
        found[f"cand-d256-short-p16-merge-w{warps}"] = dict(
            shapes["short"], page=16, head_dim=256, merge_overrides={"num_warps": warps})
        found[f"cand-d256-long-chunked-merge-w{warps}"] = dict(chunked, merge_overrides={"num_warps": warps})
        found[f"cand-d128-long-chunked-merge-w{warps}"] = dict(chunked, head_dim=128,
                                                               merge_overrides={"num_warps": warps})
    return found


CANDIDATES = _candidates()
QUICK = ["decode-d128-p16-split", "long-d128-p256-tma-r128", "long-few-d128-p256-tma", "long-d64-p16",
         "long-d256-p16"]
"""The handful compared by default (``--configs all`` for every entry)."""

NUM_SMS = 132
TARGET = ("cuda", 90, 64)


# ------------------------------------------------------------------------------------------------
# Worker: one tree, one triton, compile every configuration

def _kernel_module(name: str):
    """The module that defines the @triton.jit kernels: ``kernels.paged_attention.device`` in the
    package, the module itself in the single-file layout."""
    import importlib

    package = importlib.import_module("kernels.paged_attention")
    try:
        return importlib.import_module("kernels.paged_attention.device")
    except ImportError:
        return package


def _launcher_args(spec: dict, config_override: dict | None):
    """(attention args, merge args or None, plan label) of the launcher the package would build for
    ``spec`` on an H100-sized GPU, from tensors allocated but never filled (only shapes, strides,
    dtypes and alignment reach the compiler)."""
    import torch

    import kernels.paged_attention as kp

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.get("dtype", "bf16")]
    batch, q_len, kv_len, page, head_dim = (spec[k] for k in ("batch", "q_len", "kv_len", "page", "head_dim"))
    num_tokens = batch * q_len
    pages_per_seq = -(-kv_len // page)
    num_pages = batch * pages_per_seq + 1
    q = torch.empty(num_tokens, GQA["num_q_heads"], head_dim, dtype=dtype)
    k_cache = torch.empty(num_pages, page, GQA["num_kv_heads"], head_dim, dtype=dtype)
    v_cache = torch.empty_like(k_cache)
    block_table = torch.zeros(batch, pages_per_seq, dtype=torch.int32)
    cu_seqlens_q = torch.zeros(batch + 1, dtype=torch.int32)
    kv_lens = torch.zeros(batch, dtype=torch.int32)
    config = kp.KernelConfig(**config_override) if config_override else None
    lse = {"lse": torch.empty(num_tokens, GQA["num_q_heads"], dtype=torch.float32)} if spec.get("lse") else {}
    plan = kp.plan_launch(num_tokens=num_tokens, num_seqs=batch, head_dim=head_dim, page_size=page,
                          max_q_len=q_len, max_kv_len=kv_len, num_sms=NUM_SMS, config=config,
                          tma_possible=True, pdl_possible=True, **GQA)
    workspace = kp.allocate_workspace(plan, num_tokens, GQA["num_q_heads"], head_dim, torch.device("cpu"))
    launcher = kp.PagedAttentionLauncher(q, k_cache, v_cache, block_table, cu_seqlens_q, kv_lens,
                                         torch.empty_like(q), causal=spec.get("causal", True),
                                         scale=head_dim ** -0.5, plan=plan, workspace=workspace, **lse)
    attn, merge = dict(launcher._attn_args), launcher._merge_args and dict(launcher._merge_args)
    for args in (attn, merge):
        for name, value in (spec.get("overrides") or {}).items():
            if args is not None and name in args:
                args[name] = value
    if merge is not None:
        merge.update(spec.get("merge_overrides") or {})
    return attn, merge, plan.describe()


def _specialise(kernel, args: dict, backend, retype: dict[str, str]):
    """(signature, constexprs, attrs, options) exactly as ``JITFunction.run`` derives them from
    keyword ``args``; ``retype`` replaces parameter types (name -> triton type string)."""
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(**args)
    names = [param.name for param in kernel.params]
    specialization = [(retype[name],) + tuple(spec[1:]) if name in retype and spec[0] != "constexpr" else spec
                      for name, spec in zip(names, specialization)]
    kwargs = dict(args)
    kwargs.setdefault("debug", False)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def _ptxas_report(ptx: str) -> dict:
    """Registers and spill bytes of each kernel in ``ptx`` from ``ptxas -v`` (triton's ptxas and flags)."""
    import triton
    from triton.backends.nvidia import compiler as nvidia

    tool = nvidia.get_ptxas(TARGET[1])
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        log = subprocess.run([tool.path, "-lineinfo", "-v", f"--gpu-name={nvidia.sm_arch_from_capability(TARGET[1])}",
                              str(source), "-o", str(Path(tmp) / "kernel.o")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"regs": int(regs.group(1)) if regs else None,
            "spill_stores": int(spills.group(1)) if spills else None,
            "spill_loads": int(spills.group(2)) if spills else None, "triton": triton.__version__}


def worker(args) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, args.tree)
    if args.triton_path:
        sys.path.insert(0, args.triton_path)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget(*TARGET)
    backend = make_backend(target)
    module = _kernel_module("kernels.paged_attention")
    retype = json.loads(Path(args.retype).read_text()) if args.retype else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"triton": triton.__version__, "tree": args.tree, "configs": {}}
    for name in args.configs:
        spec = {**CONFIGS, **LSE_CONFIGS, **CANDIDATES}[name]
        attn, merge, plan = _launcher_args(spec, spec.get("config"))
        row = {"plan": plan}
        for kernel_name, kernel, kernel_args in (("attn", module._paged_attention_kernel, attn),
                                                 ("merge", module._merge_splits_kernel, merge)):
            if kernel_args is None:
                continue
            signature, constexprs, attrs, options = _specialise(kernel, kernel_args, backend,
                                                                retype.get(kernel_name, {}))
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
            ptx = compiled.asm["ptx"]
            (out / f"{name}.{kernel_name}.ptx").write_text(ptx)
            typed = {param.name: param.annotation_type for param in kernel.params if param.annotation_type}
            row[kernel_name] = {"signature": {k: str(v) for k, v in signature.items()},
                                "annotated": typed, "shared": compiled.metadata.shared,
                                "num_warps": options.num_warps, **_ptxas_report(ptx)}
            print(f"{name} {kernel_name}: {row[kernel_name]['regs']} registers, "
                  f"{row[kernel_name]['spill_stores']} B spill stores", file=sys.stderr, flush=True)
        summary["configs"][name] = row
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


# ------------------------------------------------------------------------------------------------
# Driver

def export_tree(rev: str, into: Path) -> str:
    """The repository's ``kernels/`` at ``rev`` (``WORKTREE``: as checked out; a directory: the
    ``kernels/`` folder inside it) under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    if rev == "WORKTREE" or (Path(rev) / "kernels").is_dir():
        source = REPO if rev == "WORKTREE" else Path(rev)
        subprocess.run(["cp", "-r", str(source / "kernels"), str(into)], check=True)
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "kernels"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into)


def run_worker(tree: str, out: Path, configs: list[str], triton_path: str | None, retype: Path | None) -> dict:
    command = [sys.executable, __file__, "--worker", "--tree", tree, "--out", str(out), "--configs", *configs]
    if triton_path:
        command += ["--triton-path", triton_path]
    if retype:
        command += ["--retype", str(retype)]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run(command, check=True, env=env, cwd=tree)
    return json.loads((out / "summary.json").read_text())


DEBUG_LABEL = re.compile(r"^\$L__tmp\d+:$")
"""Labels that only the debug sections use (ranges of inlined helpers); branch targets are ``$L__BB``."""


REGISTERS_PER_SM = 65536
SHARED_PER_SM = 233472  # 228 KiB on sm_90, of which 1 KiB is reserved per program


def programs_per_sm(kernel: dict) -> str:
    """"regs/smem": programs of this kernel one sm_90 multiprocessor holds by its registers
    (allocated per warp in units of 256) and by its shared memory."""
    per_warp = -(-kernel["regs"] * 32 // 256) * 256
    by_regs = min(64, REGISTERS_PER_SM // per_warp) // kernel["num_warps"]
    by_smem = SHARED_PER_SM // (kernel["shared"] + 1024)
    return f"{by_regs}/{by_smem}"


def normalise(ptx: str) -> list[str]:
    """PTX lines without debug information (line directives, debug-only labels and sections, which
    follow the source lines and the helper structure) and comments."""
    lines, in_debug = [], False
    for line in ptx.splitlines():
        stripped = line.strip()
        if stripped.startswith(".section") and ".debug" in stripped:
            in_debug = True
        if in_debug:
            if stripped == "}":
                in_debug = False
            continue
        if stripped.startswith((".loc", ".file", "//", "$L__func_end")) or not stripped or DEBUG_LABEL.match(stripped):
            continue
        lines.append(line.rstrip())
    return lines


def compare(base_dir: Path, head_dir: Path, name: str, kernel: str) -> tuple[bool, list[str]]:
    base = base_dir / f"{name}.{kernel}.ptx"
    head = head_dir / f"{name}.{kernel}.ptx"
    if not base.exists() or not head.exists():
        return base.exists() == head.exists(), [f"only in {'base' if base.exists() else 'head'}"]
    a, b = normalise(base.read_text()), normalise(head.read_text())
    diff = list(difflib.unified_diff(a, b, "base", "head", n=0, lineterm=""))
    return not diff, diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="git revision to compare against")
    parser.add_argument("--head", default="WORKTREE")
    parser.add_argument("--configs", nargs="*", default=QUICK,
                        help="names from CONFIGS / LSE_CONFIGS, 'all' (every CONFIGS entry) or 'lse'")
    parser.add_argument("--triton-path", default=None)
    parser.add_argument("--out", default=None, help="keep the PTX and reports here (default: a temp dir)")
    parser.add_argument("--report", action="store_true", help="registers and spills of --head only")
    parser.add_argument("--show-diff", type=int, default=40, help="diff lines to print per kernel")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--retype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.configs == ["all"]:
        args.configs = list(CONFIGS)
    elif args.configs == ["lse"]:
        args.configs = list(LSE_CONFIGS)
    elif args.configs == ["candidates"]:
        args.configs = list(CANDIDATES)
    if args.worker:
        return worker(args)

    work = Path(args.out or tempfile.mkdtemp(prefix="ptxdiff-"))
    head_tree = export_tree(args.head, work / "tree-head")
    head = run_worker(head_tree, work / "head", args.configs, args.triton_path, None)
    if args.report or not args.base:
        print(f"triton {head['triton']}, sm_90; programs per SM allowed by registers / by shared memory")
        for name, row in head["configs"].items():
            for kernel in ("attn", "merge"):
                if kernel in row:
                    k = row[kernel]
                    print(f"{name:44} {kernel:5} regs {k['regs']:3} spills {k['spill_stores']:4}/{k['spill_loads']:<4} "
                          f"smem {k['shared'] // 1024:3} KiB  per SM {programs_per_sm(k):>5}  "
                          f"{row['plan']['config']} splits {row['plan']['num_splits']}")
        return 0

    base_tree = export_tree(args.base, work / "tree-base")
    base = run_worker(base_tree, work / "base", args.configs, args.triton_path, None)
    retype = {kernel: {} for kernel in ("attn", "merge")}
    for row in head["configs"].values():
        for kernel in ("attn", "merge"):
            if kernel in row:
                retype[kernel].update({k: v for k, v in row[kernel]["annotated"].items() if v != "constexpr"})
    (work / "retype.json").write_text(json.dumps(retype))
    retyped = run_worker(base_tree, work / "base-retyped", args.configs, args.triton_path, work / "retype.json")

    print(f"\ntriton {head['triton']}, sm_90; base {args.base}, head {args.head}; PTX without line info; "
          f"files under {work}")
    print(f"{'config':36} {'kernel':6} {'as-is':>10} {'retyped':>10}  regs base/head  spill stores base/head")
    all_same = True
    for name in args.configs:
        for kernel in ("attn", "merge"):
            if kernel not in head["configs"][name] and kernel not in base["configs"][name]:
                continue
            same, diff = compare(work / "base", work / "head", name, kernel)
            same_retyped, diff_retyped = compare(work / "base-retyped", work / "head", name, kernel)
            all_same &= same_retyped
            b, h = base["configs"][name].get(kernel, {}), head["configs"][name].get(kernel, {})
            print(f"{name:36} {kernel:6} {'identical' if same else f'{len(diff)} lines':>10} "
                  f"{'identical' if same_retyped else f'{len(diff_retyped)} lines':>10}  "
                  f"{b.get('regs')}/{h.get('regs'):<10} {b.get('spill_stores')}/{h.get('spill_stores')}")
            for label, lines in (("as-is", diff), ("retyped", diff_retyped)):
                if lines and args.show_diff:
                    print(f"  --- {label} diff (first {args.show_diff} lines)")
                    print("\n".join("  " + line for line in lines[:args.show_diff]))
    print("retyped PTX identical for every kernel" if all_same else "retyped PTX DIFFERS")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
