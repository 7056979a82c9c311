"""The one place that turns command-line options into cases: which sweep, file or ``--case`` batches,
which workloads, and the fields set on all of them (model or heads, dtype, page sizes, seed, causal,
page pool, model features).

    add_selection_options(parser)          --sweep --workloads --case --sweep-file --model --heads --dtype
                                           --page-size --seed --causal/--no-causal --pool-pages --pool-gib
                                           --window --softcap --sinks/--no-sinks --kv-dtype --kv-scale
    select_cases(args, device_type)        -> Selection(label, cases); UsageError on a bad value

Where the cases come from: every ``--case`` and the ``--sweep-file`` if given, plus ``--sweep`` when it
is given too; with none of them, the default sweep ('default' on a GPU, 'cpu-tiny' without). The
field options then apply to every case: a sweep's or file's case becomes the variant named by its
suffix (``decode-b64-q1-c4096-p16`` with ``--model gemma-2-9b`` is ``decode-b64-q1-c4096-p16-h16x8d256``;
a field equal to the case's own changes nothing), each ``--page-size`` gives one case per page size,
and cases that end up identical are measured once. A ``--case`` batch takes the fields directly
(standard 32/8/128 bf16 causal, page 16, seed 0 unless given) and is named ``{grammar}-p{page}{suffix}``,
or exactly ``NAME`` when written ``NAME=GRAMMAR`` (what a reproducer does).

Model features (`adapters.features`): ``--model NAME`` sets the heads and the features of the model's
full layer (``NAME:sliding`` its windowed layer; `harness.cases.models`), every one of them, so
``--model llama-3-8b`` runs plain attention even on a featured sweep file's cases. ``--window W``,
``--softcap C``, ``--sinks`` / ``--no-sinks``, ``--kv-dtype fp8`` and ``--kv-scale tensor|head`` set one
feature on every case and win over the model's (``--model gemma-2-9b --softcap none`` is Gemma-2-9B's
full layer without its cap); ``none`` turns a window, cap or fp8 cache off. ``--kv-scale`` needs
``--kv-dtype fp8`` beside it. Each changes the case name like ``--dtype`` does (``-w4096``, ``-cap50``,
``-sinks``, ``-kvfp8``, ``-kvfp8h``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any

from adapters.features import KV_DTYPES, KV_SCALES, check_features
from harness.cases.models import get_model, parse_heads
from harness.cases.sweep import (DTYPE_NAMES, STANDARD_FIELDS, SWEEPS, WORKLOADS, Case, get_sweep, make_case,
                                 override_case, select, unique_cases)

CPU_SWEEP = "cpu-tiny"
"""The built-in sweep sized for a machine without a GPU (Triton's interpreter, eager Flex)."""


def default_sweep_name(device_type: str) -> str:
    """The sweep run when none is named: 'default' on a GPU, `CPU_SWEEP` on the CPU (the GPU sweep
    would take hours there). The command line and asv both choose through this."""
    return "default" if str(device_type).startswith("cuda") else CPU_SWEEP



def split_case_text(text: str) -> tuple[str | None, str]:
    """``"NAME=GRAMMAR"`` -> (NAME, GRAMMAR); ``"GRAMMAR"`` -> (None, GRAMMAR). The name ends at the first
    ``=`` outside parentheses (a batch string has ``=`` only inside a distribution's parentheses), so
    any case name, even one made from a batch string, can be given back exactly."""
    depth = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == "=" and depth == 0:
            return text[:index].strip(), text[index + 1:].strip()
    return None, text.strip()

DEFAULT_PAGE_SIZE = 16
"""The page size of a ``--case`` batch when no ``--page-size`` is given."""


try:  # the command line's one kind of user mistake, shared with harness.frontends.cli
    from harness.errors import UsageError
except ImportError:  # pragma: no cover - a checkout without harness/errors.py
    class UsageError(ValueError):  # type: ignore[no-redef]
        """A command-line value that selects no valid case; the message names the value and the
        choices. The CLI prints it as one line (``paged-bench: <message>``) and exits with status 2."""


@dataclass
class Overrides:
    """The field options: ``fields`` (case fields such as num_q_heads, dtype, seed, pool_gib) and
    ``page_sizes`` (empty: keep each case's own)."""

    fields: dict[str, Any] = field(default_factory=dict)
    page_sizes: tuple[int, ...] = ()
    tags: list[str] = field(default_factory=list)
    """Short words for the selection's label, e.g. ``model=llama-3-70b-tp8``."""


@dataclass
class Selection:
    """What a run measures: ``label`` (recorded as the run's sweep) and the cases, in order."""

    label: str
    cases: list[Case]
    sweep: str | None = None
    """The built-in sweep the cases came from, if any."""
    sweep_file: str | None = None
    """The sweep file's path, if any."""


def backend_list(text: str | None) -> list[str] | None:
    """``--backends a,b`` as names (None when not given); a value that names none is a `UsageError`."""
    if not text:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError(f"--backends {text!r}: name at least one backend")
    return names


def check_backends(text: str | None, hint: str = "") -> list[str] | None:
    """`backend_list`, each name a registered backend: a `UsageError` names the unknown ones and the
    choices (``hint`` goes before them, e.g. which backends a command gates by default)."""
    from adapters.base import adapter_classes

    names = backend_list(text)
    known = adapter_classes()
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        raise UsageError(f"--backends {text!r}: unknown backend(s) {', '.join(unknown)}; {hint}"
                         f"choose from {', '.join(known)}")
    return names


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    """Add the options `select_cases` reads (all optional; values are checked there, not by argparse,
    so that every bad value is one `UsageError` line)."""
    group = parser.add_argument_group("what to measure")
    group.add_argument("--sweep", help=f"a built-in sweep: {', '.join(SWEEPS)} (default: 'default' with a GPU, "
                                       "'cpu-tiny' without, unless --case or --sweep-file is given)")
    group.add_argument("--workloads", help=f"comma-separated workload kinds: {', '.join(WORKLOADS)}")
    group.add_argument("--case", action="append", metavar="[NAME=]GRAMMAR",
                       help="a batch string such as 8q1c3000_8q9-2000c0-7000 or "
                            "'64q1c~lognormal(median=2k,sigma=1)' (repeatable); NAME= names it exactly")
    group.add_argument("--sweep-file", metavar="FILE", help="a TOML sweep file (see harness/cases/sweepfile.py)")
    group.add_argument("--model", help="run every case with this model's heads per GPU (`paged-bench models`)")
    group.add_argument("--heads", metavar="HQ/HKV/D", help="run every case with these heads, e.g. 16/8/256")
    group.add_argument("--dtype", help=f"run every case in this dtype: {', '.join(DTYPE_NAMES)}")
    group.add_argument("--page-size", action="append", metavar="N[,N...]",
                       help="page size(s) for every case (repeatable or a comma list); --case default 16")
    group.add_argument("--seed", help="seed of every case's lengths and values (default: each case's own, 0)")
    group.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                       help="causal (bottom-right) or not, for every case (default: each case's own, causal)")
    group.add_argument("--pool-pages", metavar="N", help="page pool of every case, in pages (null page included)")
    group.add_argument("--pool-gib", metavar="GIB", help="page pool of every case, in GiB of K and V cache together")
    add_feature_options(parser)


def add_feature_options(parser: argparse.ArgumentParser) -> None:
    """The model-feature options (``--window``, ``--softcap``, ``--sinks``, ``--kv-dtype``, ``--kv-scale``),
    read by `feature_fields`; also used by the Triton kernel's tuning script."""
    features = parser.add_argument_group("model features (over --model's; `none` turns one off)")
    features.add_argument("--window", metavar="W", help="sliding window of W keys, the query's own included "
                                                        "(the model config's sliding_window), or none")
    features.add_argument("--softcap", metavar="C", help="logit soft-cap C (score -> C*tanh(score/C)), or none")
    features.add_argument("--sinks", action=argparse.BooleanOptionalAction, default=None,
                          help="a learned sink logit per query head (gpt-oss), or not")
    features.add_argument("--kv-dtype", metavar="DTYPE",
                          help=f"KV cache dtype: {', '.join(KV_DTYPES)} (e4m3 with scales), or none (the query's)")
    features.add_argument("--kv-scale", metavar="GRAIN",
                          help=f"scales of an fp8 cache: {' or '.join(KV_SCALES)} (default tensor; needs --kv-dtype fp8)")


def _get(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name, None)


def _positive_int(option: str, text: str, minimum: int = 1) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UsageError(f"{option} {text!r} is not an integer") from None
    if value < minimum:
        raise UsageError(f"{option} {text!r} must be at least {minimum}")
    return value


def parse_overrides(args: argparse.Namespace) -> Overrides:
    """The field options of ``args``, checked; `UsageError` names a bad value and the choices."""
    out = Overrides()
    model, heads = _get(args, "model"), _get(args, "heads")
    if model and heads:
        raise UsageError(f"--model {model!r} and --heads {heads!r} both set the heads; give one")
    if model:
        try:
            preset = get_model(model)
        except ValueError as error:
            raise UsageError(f"--model: {error}") from None
        out.fields.update(preset.case_fields)
        out.tags.append(f"model={preset.name}")
    if heads:
        try:
            hq, hkv, dim = parse_heads(heads)
        except ValueError as error:
            raise UsageError(f"--heads: {error}") from None
        from adapters.validation import SUPPORTED_HEAD_DIMS

        if dim not in SUPPORTED_HEAD_DIMS:
            raise UsageError(f"--heads {heads!r}: head dim {dim} is not supported; choose one of "
                             f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
        out.fields.update(num_q_heads=hq, num_kv_heads=hkv, head_dim=dim)
        out.tags.append(f"heads={hq}/{hkv}/{dim}")
    dtype = _get(args, "dtype")
    if dtype is not None:
        if dtype not in DTYPE_NAMES:
            raise UsageError(f"--dtype {dtype!r} is not a dtype; choose one of {', '.join(DTYPE_NAMES)}")
        out.fields["dtype"] = dtype
        out.tags.append(f"dtype={dtype}")
    pages: list[int] = []
    for text in _get(args, "page_size") or []:
        for part in str(text).split(","):
            if not part.strip():
                raise UsageError(f"--page-size {text!r} has an empty entry; write e.g. --page-size 16,256")
            page = _positive_int("--page-size", part)
            if page not in pages:
                pages.append(page)
    out.page_sizes = tuple(pages)
    if pages:
        out.tags.append("page=" + ",".join(map(str, pages)))
    seed = _get(args, "seed")
    if seed is not None:
        out.fields["seed"] = _positive_int("--seed", seed, minimum=0)
        out.tags.append(f"seed={out.fields['seed']}")
    causal = _get(args, "causal")
    if causal is not None:
        out.fields["causal"] = bool(causal)
        out.tags.append("causal" if causal else "noncausal")
    pool_pages, pool_gib = _get(args, "pool_pages"), _get(args, "pool_gib")
    if pool_pages is not None and pool_gib is not None:
        raise UsageError(f"--pool-pages {pool_pages} and --pool-gib {pool_gib} both size the pool; give one")
    if pool_pages is not None:
        out.fields.update(pool_pages=_positive_int("--pool-pages", pool_pages, minimum=2), pool_gib=None)
        out.tags.append(f"pool={out.fields['pool_pages']}pages")
    if pool_gib is not None:
        try:
            gib = float(pool_gib)
        except ValueError:
            raise UsageError(f"--pool-gib {pool_gib!r} is not a number of GiB") from None
        if not math.isfinite(gib) or gib <= 0:
            raise UsageError(f"--pool-gib {pool_gib!r} must be a positive number of GiB")
        out.fields.update(pool_gib=gib, pool_pages=None)
        out.tags.append(f"pool={gib:g}gib")
    _feature_overrides(args, out)
    return out


NONE_WORDS = ("none",)
"""What turns a window, cap or fp8 cache off on the command line."""


def _off(text: Any) -> bool:
    return str(text).strip().lower() in NONE_WORDS


def parse_window(text: Any) -> int | None:
    """``--window`` text: a number of keys (``4096`` or ``4k``) or ``none``; `UsageError` otherwise."""
    from adapters.grammar import parse_length

    if _off(text):
        return None
    try:
        low, high = parse_length(str(text).strip())
    except ValueError:
        low, high = None, None
    if low is None or low != high:
        raise UsageError(f"--window {text!r} is not a number of keys (e.g. 4096 or 4k) or none")
    problem = check_features(low, None, False, None, "tensor", True)
    if problem:
        raise UsageError(f"--window {text!r}: {problem[1]}")
    return low


def parse_softcap(text: Any) -> float | None:
    """``--softcap`` text: a positive, finite number or ``none``; `UsageError` otherwise."""
    if _off(text):
        return None
    try:
        cap = float(str(text).strip())
    except ValueError:
        raise UsageError(f"--softcap {text!r} is not a number (e.g. 50) or none") from None
    problem = check_features(None, cap, False, None, "tensor", True)
    if problem:
        raise UsageError(f"--softcap {text!r}: {problem[1]}")
    return cap


def feature_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The model-feature options of ``args`` as case fields, checked as `parse_overrides` checks them
    (`UsageError` names a bad value)."""
    out = Overrides()
    _feature_overrides(args, out)
    return out.fields


def _feature_overrides(args: argparse.Namespace, out: Overrides) -> None:
    """The feature options over the model's features (see the module docstring), checked together with
    ``--causal`` by `adapters.features.check_features`."""
    window, softcap, sinks = _get(args, "window"), _get(args, "softcap"), _get(args, "sinks")
    kv_dtype, kv_scale = _get(args, "kv_dtype"), _get(args, "kv_scale")
    if window is not None:
        out.fields["sliding_window"] = parse_window(window)
        out.tags.append(f"window={out.fields['sliding_window'] or 'none'}")
    if softcap is not None:
        out.fields["softcap"] = parse_softcap(softcap)
        out.tags.append(f"softcap={'none' if out.fields['softcap'] is None else format(out.fields['softcap'], 'g')}")
    if sinks is not None:
        out.fields["sinks"] = bool(sinks)
        out.tags.append("sinks" if sinks else "nosinks")
    if kv_dtype is not None:
        value = None if _off(kv_dtype) else str(kv_dtype).strip().lower()
        problem = check_features(None, None, False, value, "tensor", True)
        if problem:
            raise UsageError(f"--kv-dtype {kv_dtype!r} is not a KV cache dtype; choose "
                             f"{', '.join(KV_DTYPES)} or none (the query's dtype)")
        out.fields["kv_dtype"] = value
        if value is None:
            out.fields["kv_scale"] = "tensor"
    if kv_scale is not None:
        value = str(kv_scale).strip().lower()
        if value not in KV_SCALES:
            raise UsageError(f"--kv-scale {kv_scale!r} is not a scale grain; choose {' or '.join(KV_SCALES)}")
        if out.fields.get("kv_dtype") is None:
            raise UsageError(f"--kv-scale {kv_scale} sets the scales of an fp8 cache; give --kv-dtype fp8 with it")
        out.fields["kv_scale"] = value
    if out.fields.get("kv_dtype") is not None:
        out.fields.setdefault("kv_scale", "tensor")
        out.tags.append(f"kv={out.fields['kv_dtype']}" + ("h" if out.fields["kv_scale"] == "head" else ""))
    elif kv_dtype is not None:
        out.tags.append("kv=none")
    causal = _get(args, "causal")
    if causal is False and out.fields.get("sliding_window") is not None:
        source = "--window" if window is not None else f"--model {_get(args, 'model')}"
        raise UsageError(f"{source} sets a sliding window of {out.fields['sliding_window']} keys, which needs causal "
                         "attention (the window ends at the query's own position); drop --no-causal")


def _variants(case: Case, overrides: Overrides) -> list[Case]:
    pages = overrides.page_sizes or (case.page_size,)
    return [override_case(case, page_size=page, **overrides.fields) for page in pages]


def cli_case(text: str, overrides: Overrides) -> list[Case]:
    """The cases of one ``--case [NAME=]GRAMMAR`` with the field options applied."""
    from adapters.grammar import parse_grammar

    name, grammar = split_case_text(text)
    if name is not None and not name:
        raise UsageError(f"--case {text!r}: the name before '=' is empty")
    try:
        parse_grammar(grammar)
    except ValueError as error:
        raise UsageError(f"--case {text!r}: {error}") from None
    pages = overrides.page_sizes or (DEFAULT_PAGE_SIZE,)
    if name is None:
        return [make_case(grammar, grammar, page, **overrides.fields) for page in pages]
    if len(pages) > 1:
        raise UsageError(f"--case {text!r}: a named case takes one page size, not {', '.join(map(str, pages))}; "
                         "leave NAME= out to get one case per page size")
    fields = {**STANDARD_FIELDS, **overrides.fields}
    if fields.get("pool_gib") is not None:
        fields["pool_gib"] = float(fields["pool_gib"])
    return [Case(name=name, grammar=grammar, page_size=pages[0], **fields)]


def _check(cases: list[Case]) -> None:
    """Build every case's spec once: a bad field (head dim, pool too small) is a usage error."""
    from adapters.validation import BatchValidationError

    for case in cases:
        try:
            case.spec()
        except (BatchValidationError, ValueError) as error:
            raise UsageError(f"case {case.name}: {error}") from None


def select_cases(args: argparse.Namespace, device_type: str) -> Selection:
    """The cases ``args`` select (see the module docstring), each checked; `UsageError` otherwise."""
    overrides = parse_overrides(args)
    texts = _get(args, "case") or []
    file_path = _get(args, "sweep_file")
    sweep_name = _get(args, "sweep")
    if sweep_name is None and not texts and not file_path:
        sweep_name = default_sweep_name(device_type)
    cases: list[Case] = []
    labels: list[str] = []
    if sweep_name is not None:
        try:
            base = get_sweep(sweep_name)
        except ValueError:
            raise UsageError(f"--sweep {sweep_name!r} is not a sweep; choose one of {', '.join(SWEEPS)}") from None
        cases += [variant for case in base for variant in _variants(case, overrides)]
        labels.append(sweep_name)
    if file_path:
        from harness.cases.sweepfile import SweepFileError, load_sweep_file

        try:
            sweep = load_sweep_file(file_path)
        except SweepFileError as error:
            raise UsageError(f"--sweep-file {error}") from None
        cases += [variant for case in sweep.all_cases() for variant in _variants(case, overrides)]
        labels.append(sweep.name)
    for text in texts:
        cases += cli_case(text, overrides)
    if texts:
        labels.append("cases")
    workloads_text = _get(args, "workloads")
    if workloads_text:
        wanted = [w.strip() for w in workloads_text.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in WORKLOADS]
        if unknown or not wanted:
            raise UsageError(f"--workloads {workloads_text!r}: {', '.join(unknown) or 'nothing'} is not a workload; "
                             f"choose from {', '.join(WORKLOADS)}")
        total = len(cases)
        cases = select(cases, wanted)
        if not cases:
            raise UsageError(f"--workloads {workloads_text!r} selects none of the {total} cases of "
                             f"{'+'.join(labels)}")
        labels.append("/".join(wanted))
    try:
        cases = unique_cases(cases)
    except ValueError as error:
        raise UsageError(str(error)) from None
    _check(cases)
    label = "+".join(labels + overrides.tags)
    return Selection(label=label, cases=cases, sweep=sweep_name, sweep_file=str(file_path) if file_path else None)


def selection_argv(args: argparse.Namespace) -> list[str]:
    """The selection options of ``args`` as command-line words (to pass them on to a child command,
    e.g. compare-envs' runs)."""
    argv: list[str] = []
    for option in ("sweep", "workloads", "sweep_file", "model", "heads", "dtype", "seed", "pool_pages", "pool_gib",
                   "window", "softcap", "kv_dtype", "kv_scale"):
        value = _get(args, option)
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    for text in _get(args, "case") or []:
        argv += ["--case", text]
    for text in _get(args, "page_size") or []:
        argv += ["--page-size", str(text)]
    causal = _get(args, "causal")
    if causal is not None:
        argv.append("--causal" if causal else "--no-causal")
    sinks = _get(args, "sinks")
    if sinks is not None:
        argv.append("--sinks" if sinks else "--no-sinks")
    return argv
