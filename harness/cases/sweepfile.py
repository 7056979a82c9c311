"""Sweep files: a sweep written in TOML instead of Python (``--sweep-file FILE``; asv reads one through
``$PAGED_BENCH_SWEEP_FILE``). Torch-free unless asked to validate the batches.

    name = "llama70b-serving"            # optional; default: the file's name without .toml

    [defaults]                            # optional; every [[case]] and [axes.*] below that does not set its own
    model = "llama-3-70b-tp8"             # or heads = "8/1/128" (HQ/HKV/D); `paged-bench models` lists models
    dtype = "bf16"                        # bf16, fp16 or fp32
    page_sizes = [16]                     # or page_size = 16
    causal = true
    seed = 0
    pool_gib = 40                         # the page pool: GiB of K+V cache, or pool_pages = 200000
    kv_dtype = "fp8"                      # model features (adapters.features), here, per [[case]] or per
    kv_scale = "head"                     #   [axes.*]: sliding_window = 4096, softcap = 50.0, sinks = true,
                                          #   kv_dtype = "fp8" with kv_scale = "tensor" or "head"

    [[case]]                              # a named case: {name}-p{page}{suffix}, one per page size
    name = "serve-300"
    grammar = "296q1c~lognormal(median=2k,sigma=1,max=32k)_4q512c0-4k"

    [[case]]
    name = "gemma-local"
    grammar = "4q2kc2k"
    model = "gemma-2-9b:sliding"          # a model's windowed layer: heads, window 4096 and cap 50

    [axes.decode]                         # a product, like the built-in sweeps (decode, prefill, spec-decode, mixed)
    batch_sizes = [16, 64]
    contexts = [4096, "16k"]              # q_lens defaults to [1] for decode
    page_sizes = [16, 256]
    heads = ["32/8/128", "16/8/256"]      # product axes: heads (or models), dtypes, causal
    dtypes = ["bf16", "fp16"]

    [axes.mixed]
    mixes = ["mixed-8d3000-8p2000"]       # built-in mixes (harness.cases.sweep.MIXED_GRAMMARS); others as [[case]]

A ``model`` sets the heads and every feature of that layer (`harness.cases.models`: ``NAME`` is the model's
full layer, ``NAME:sliding`` its windowed one); feature keys in the same table win over it, and a
table's own ``model`` wins over features it inherits from [defaults]. ``"none"`` turns a window, cap or
fp8 cache off (``softcap = "none"``). An axes block takes the features as single values (they are not
product axes), and its ``models`` must share their features (``gemma-2-9b`` and ``gemma-2-9b:sliding``
differ: write one of them as a [[case]], or use two sweep files). ``kv_scale`` in a [[case]] or
[axes.*] needs an fp8 cache there (``kv_dtype = "fp8"`` in it or in [defaults]).

Case names follow harness.cases.sweep's rule (``{stem}-p{page}`` then a suffix for every field that differs
from the standard 32/8/128 bf16 causal seed-0 default-pool case), so a file that declares a built-in
shape gets the built-in case, cell id included. Every error names the file, the line and the field:
``sweep.toml:12: case #2 'serve-300', field 'grammar': ...``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Callable

from adapters.features import KV_DTYPES, KV_SCALES, check_features
from adapters.grammar import parse_grammar, parse_length
from harness.cases.models import features_text, format_heads, get_model, parse_heads
from harness.cases.sweep import DTYPE_NAMES, MIXED_GRAMMARS, PAGE_SIZES, Axes, Case, Sweep, cases_from_axes, make_case

CASE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")
"""A case name (stem): starts with a letter (a batch string starts with a digit), no spaces or '='."""

AXES_WORKLOADS = ("decode", "prefill", "spec-decode", "mixed")
FEATURE_KEYS = ("sliding_window", "softcap", "sinks", "kv_dtype", "kv_scale")
"""The model-feature keys (`adapters.features`), the same names as the case fields."""
MODEL_FEATURES = ("sliding_window", "softcap", "sinks")
"""The features a ``model`` / ``models`` sets (a preset sets no KV-cache dtype)."""
_FIELD_KEYS = ("model", "heads", "dtype", "causal", "seed", "pool_pages", "pool_gib", "page_size", "page_sizes",
               *FEATURE_KEYS)
DEFAULTS_KEYS = _FIELD_KEYS
CASE_KEYS = ("name", "grammar") + _FIELD_KEYS
UNIFORM_AXES_KEYS = ("batch_sizes", "q_lens", "contexts", "page_sizes", "heads", "models", "dtypes", "causal",
                     "seed", "pool_pages", "pool_gib", *FEATURE_KEYS)
MIXED_AXES_KEYS = ("mixes", "page_sizes", "heads", "models", "dtypes", "causal", "seed", "pool_pages", "pool_gib",
                   *FEATURE_KEYS)
TOP_KEYS = ("name", "description", "defaults", "case", "axes")


class SweepFileError(ValueError):
    """A sweep file that cannot be used; the message starts with ``FILE:LINE:`` and names the field."""

    def __init__(self, path: str, line: int, field: str, message: str):
        where = f"{path}:{line}:" if line else f"{path}:"
        super().__init__(f"{where} {field}: {message}" if field else f"{where} {message}")
        self.path, self.line, self.field = path, line, field


# ----------------------------------------------------------------------------------------------
# where each key is written

def _strip_comment(line: str) -> str:
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:index]
    return line


def _dotted(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


_ARRAY_HEADER = re.compile(r"^\[\[\s*(.+?)\s*\]\]$")
_TABLE_HEADER = re.compile(r"^\[\s*(.+?)\s*\]$")
_KEY = re.compile(r"""^((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*=""")


class KeyLines:
    """Line numbers of tables and keys in a TOML text: ``("case", 1, "grammar")`` is the ``grammar``
    key of the second ``[[case]]``; a key not found falls back to its table's line."""

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        table: tuple = ()
        counts: dict[tuple, int] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = _strip_comment(raw).strip()
            if not line:
                continue
            if match := _ARRAY_HEADER.match(line):
                key = _dotted(match[1])
                counts[key] = counts.get(key, -1) + 1
                table = key + (counts[key],)
                self.lines.setdefault(table, number)
            elif match := _TABLE_HEADER.match(line):
                table = _dotted(match[1])
                self.lines.setdefault(table, number)
            elif match := _KEY.match(line):
                self.lines.setdefault(table + _dotted(match[1]), number)

    def find(self, path: tuple) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 0


class _Table:
    """One table of the file being read: its values, where it is, and how to complain about a key."""

    def __init__(self, data: dict, path: tuple, label: str, file: str, lines: KeyLines):
        self.data, self.path, self.label, self.file, self.lines = data, path, label, file, lines

    def error(self, key: str | None, message: str) -> SweepFileError:
        line = self.lines.find(self.path + ((key,) if key else ()))
        field = f"{self.label}, field {key!r}" if key else self.label
        return SweepFileError(self.file, line, field, message)

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(key, f"unknown field; {self.label} takes {', '.join(allowed)}")

    def get(self, key: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
        if key not in self.data:
            return default
        try:
            return parse(self.data[key])
        except (TypeError, ValueError) as error:
            raise self.error(key, str(error)) from None


# ----------------------------------------------------------------------------------------------
# values

def _int(value: Any, minimum: int = 0, lengths: bool = False) -> int:
    if isinstance(value, str) and lengths:
        low, high = parse_length(value.strip())
        if low != high:
            raise ValueError(f"{value!r} is a range; give one length per entry")
        value = low
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer" + (" (or a length such as \"4k\")" if lengths else ""))
    if value < minimum:
        raise ValueError(f"{value} is below {minimum}")
    return value


def _int_list(minimum: int, lengths: bool = False) -> Callable[[Any], tuple[int, ...]]:
    def parse(value: Any) -> tuple[int, ...]:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("is empty; give at least one value")
        try:
            return tuple(_int(v, minimum, lengths) for v in values)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{error} (in {value!r})") from None
    return parse


def _str_list(check: Callable[[str], Any]) -> Callable[[Any], tuple]:
    def parse(value: Any) -> tuple:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("is empty; give at least one value")
        out = []
        for item in values:
            if not isinstance(item, str):
                raise TypeError(f"{item!r} is not a string")
            out.append(check(item))
        return tuple(out)
    return parse


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not true or false")
    return value


def _bool_list(value: Any) -> tuple[bool, ...]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("is empty; give true, false or both")
    return tuple(_bool(v) for v in values)


def _dtype(value: Any) -> str:
    if value not in DTYPE_NAMES:
        raise ValueError(f"{value!r} is not a dtype; choose one of {', '.join(DTYPE_NAMES)}")
    return value


def _gib(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{value!r} is not a positive number of GiB")
    return float(value)


def _heads_of_model(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{name!r} is not a model name")
    return get_model(name).heads


def _model(name: Any) -> tuple[str, dict[str, Any]]:
    """(heads text, feature fields) of a model preset name such as ``"gemma-2-9b:sliding"``."""
    if not isinstance(name, str):
        raise TypeError(f"{name!r} is not a model name")
    preset = get_model(name)
    return preset.heads, preset.features


def _none(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "none"


def _feature_problem(**fields: Any) -> None:
    values = {"sliding_window": None, "softcap": None, "sinks": False, "kv_dtype": None, "kv_scale": "tensor"}
    values.update(fields)
    problem = check_features(*(values[key] for key in FEATURE_KEYS), causal=True)
    if problem:
        raise ValueError(problem[1])


def _window(value: Any) -> int | None:
    if _none(value):
        return None
    if isinstance(value, list):
        raise TypeError(f"{value!r} is a list; give one window (features are not product axes)")
    window = _int(value, 1, lengths=True)
    _feature_problem(sliding_window=window)
    return window


def _softcap(value: Any) -> float | None:
    if _none(value):
        return None
    if isinstance(value, list):
        raise TypeError(f"{value!r} is a list; give one cap (features are not product axes)")
    _feature_problem(softcap=value)
    return float(value)


def _sinks(value: Any) -> bool:
    if isinstance(value, list):
        raise TypeError(f"{value!r} is a list; give true or false (features are not product axes)")
    return _bool(value)


def _kv_dtype(value: Any) -> str | None:
    if _none(value):
        return None
    if value not in KV_DTYPES:
        raise ValueError(f"{value!r} is not a KV cache dtype; choose {', '.join(map(repr, KV_DTYPES))} or \"none\" "
                         "(the query's dtype)")
    return value


def _kv_scale(value: Any) -> str:
    if value not in KV_SCALES:
        raise ValueError(f"{value!r} is not a scale grain; choose {' or '.join(map(repr, KV_SCALES))}")
    return value


_FEATURE_PARSERS: dict[str, Callable[[Any], Any]] = {"sliding_window": _window, "softcap": _softcap, "sinks": _sinks,
                                                     "kv_dtype": _kv_dtype, "kv_scale": _kv_scale}


def _features(table: "_Table", out: dict[str, Any], *, strict_scale: bool) -> None:
    """The table's feature keys into ``out`` (over what a model or [defaults] set there); with
    ``strict_scale`` a ``kv_scale`` needs an fp8 cache in ``out`` (a [[case]] or [axes.*] table)."""
    for key in FEATURE_KEYS:
        if key in table.data:
            out[key] = table.get(key, _FEATURE_PARSERS[key])
    if out.get("kv_dtype") is None:
        if strict_scale and "kv_scale" in table.data:
            raise table.error("kv_scale", "sets the scales of an fp8 cache; set kv_dtype = \"fp8\" here or in "
                                          "[defaults]")
        if "kv_dtype" in table.data:
            out.pop("kv_scale", None)


def _heads(text: Any) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{text!r} is not HQ/HKV/D text such as \"32/8/128\"")
    return format_heads(*parse_heads(text))


def _name(value: Any) -> str:
    if not isinstance(value, str) or not CASE_NAME.match(value):
        raise ValueError(f"{value!r} is not a case name: a letter, then letters, digits, '_', '.', '+' or '-'")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


def _grammar(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a batch string")
    parse_grammar(value)
    return value.strip()


# ----------------------------------------------------------------------------------------------
# tables -> fields


def _read_pool(table: _Table, into: dict[str, Any]) -> None:
    """The page pool's size that ``table`` sets, into ``into``: ``pool_pages`` or ``pool_gib``, the one set here
    replacing the other (from the defaults)."""
    if "pool_pages" in table.data:
        into.pop("pool_gib", None)
        into["pool_pages"] = table.get("pool_pages", lambda v: _int(v, 2))
    if "pool_gib" in table.data:
        into.pop("pool_pages", None)
        into["pool_gib"] = table.get("pool_gib", _gib)


def _fields(table: _Table, inherited: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scalar fields of a [defaults] or [[case]] table, over ``inherited``: heads (from model or
    heads), dtype, causal, seed, pool, page sizes."""
    out = dict(inherited or {})
    if "model" in table.data and "heads" in table.data:
        raise table.error("heads", "give either model or heads, not both")
    if "page_size" in table.data and "page_sizes" in table.data:
        raise table.error("page_sizes", "give either page_size or page_sizes, not both")
    if "pool_pages" in table.data and "pool_gib" in table.data:
        raise table.error("pool_gib", "give the pool in pages or in GiB, not both")
    if "model" in table.data:
        out["heads"], features = table.get("model", _model)
        out.update(features)
    if "heads" in table.data:
        out["heads"] = table.get("heads", _heads)
    for key, parse in (("dtype", _dtype), ("causal", _bool), ("seed", lambda v: _int(v, 0))):
        if key in table.data:
            out[key] = table.get(key, parse)
    _read_pool(table, out)
    if "page_size" in table.data:
        out["page_sizes"] = (table.get("page_size", lambda v: _int(v, 1)),)
    if "page_sizes" in table.data:
        out["page_sizes"] = table.get("page_sizes", _int_list(1))
    _features(table, out, strict_scale=table.path[:1] == ("case",))
    if out.get("causal") is False and out.get("sliding_window") is not None:
        key = next((k for k in ("sliding_window", "model", "causal") if k in table.data), None)
        raise table.error(key, f"a sliding window ({out['sliding_window']} keys) needs causal attention (the "
                               "window ends at the query's own position)")
    return out


def _case_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Scalar fields (heads text expanded) as harness.cases.sweep case fields."""
    out = {key: fields[key] for key in ("dtype", "causal", "seed", "pool_pages", "pool_gib", *FEATURE_KEYS)
           if key in fields}
    if "heads" in fields:
        out.update(zip(("num_q_heads", "num_kv_heads", "head_dim"), parse_heads(fields["heads"])))
    return out


def _named_cases(table: _Table, defaults: dict[str, Any]) -> list[Case]:
    table.check_keys(CASE_KEYS)
    for key in ("name", "grammar"):
        if key not in table.data:
            raise table.error(None, f"has no {key!r}; a [[case]] needs name and grammar")
    name = table.get("name", _name)
    table.label = f"case #{table.path[-1] + 1} {name!r}"
    grammar = table.get("grammar", _grammar)
    fields = _fields(table, defaults)
    pages = fields.get("page_sizes", (16,))
    return [make_case(name, grammar, page, **_case_fields(fields)) for page in pages]


def _axes(table: _Table, workload: str, defaults: dict[str, Any]) -> Axes:
    mixed = workload == "mixed"
    table.check_keys(MIXED_AXES_KEYS if mixed else UNIFORM_AXES_KEYS)
    if "heads" in table.data and "models" in table.data:
        raise table.error("models", "give either models or heads, not both")
    if "pool_pages" in table.data and "pool_gib" in table.data:
        raise table.error("pool_gib", "give the pool in pages or in GiB, not both")
    fields: dict[str, Any] = {}
    if mixed:
        if "mixes" not in table.data:
            raise table.error(None, "has no 'mixes' (names of built-in mixes: " + ", ".join(MIXED_GRAMMARS) + ")")

        def mix(name: str) -> str:
            if name not in MIXED_GRAMMARS:
                raise ValueError(f"{name!r} is not a built-in mix; choose one of {', '.join(MIXED_GRAMMARS)} "
                                 "(write other batches as [[case]])")
            return name
        fields["mixes"] = table.get("mixes", _str_list(mix))
    else:
        for key in ("batch_sizes", "contexts") + (() if workload == "decode" else ("q_lens",)):
            if key not in table.data:
                raise table.error(None, f"has no {key!r}")
        fields["batch_sizes"] = table.get("batch_sizes", _int_list(1))
        fields["q_lens"] = table.get("q_lens", _int_list(1, lengths=True), (1,))
        fields["contexts"] = table.get("contexts", _int_list(0, lengths=True))
    fields["page_sizes"] = table.get("page_sizes", _int_list(1), defaults.get("page_sizes", PAGE_SIZES))
    features = {key: defaults[key] for key in FEATURE_KEYS if key in defaults}
    if "models" in table.data:
        models = table.get("models", _str_list(_model))
        fields["head_configs"] = tuple(heads for heads, _ in models)
        if any(found != models[0][1] for _, found in models):
            names = table.data["models"]
            raise table.error("models", f"{', '.join(map(repr, names))} differ in their attention features "
                                        f"({'; '.join(features_text(found) for _, found in models)}); an axes block varies "
                                        "the heads only: give models with the same features, write the others "
                                        "as [[case]] entries, or use one sweep file per kind of layer")
        features.update(models[0][1])
    elif "heads" in table.data:
        fields["head_configs"] = table.get("heads", _str_list(_heads))
    elif "heads" in defaults:
        fields["head_configs"] = (defaults["heads"],)
    if "dtypes" in table.data:
        fields["dtypes"] = table.get("dtypes", _str_list(_dtype))
    elif "dtype" in defaults:
        fields["dtypes"] = (defaults["dtype"],)
    if "causal" in table.data:
        fields["causals"] = table.get("causal", _bool_list)
    elif "causal" in defaults:
        fields["causals"] = (defaults["causal"],)
    _features(table, features, strict_scale=True)
    causals = fields.get("causals", (True,))
    if False in causals and features.get("sliding_window") is not None:
        key = next((k for k in ("sliding_window", "models", "causal") if k in table.data), None)
        raise table.error(key, f"a sliding window ({features['sliding_window']} keys) needs causal attention; "
                               "drop causal = false here")
    overrides = {key: defaults[key] for key in ("seed", "pool_pages", "pool_gib") if key in defaults}
    if "seed" in table.data:
        overrides["seed"] = table.get("seed", lambda v: _int(v, 0))
    _read_pool(table, overrides)
    plain = {"sliding_window": None, "softcap": None, "sinks": False, "kv_dtype": None, "kv_scale": "tensor"}
    overrides.update({key: value for key, value in features.items() if value != plain[key] or key in table.data
                      or key in defaults or "models" in table.data})
    return Axes(**fields, overrides=tuple(overrides.items()))


# ----------------------------------------------------------------------------------------------
# the file

def parse_sweep_text(text: str, path: str = "<sweep file>", *, validate: bool = True) -> Sweep:
    """The `Sweep` a sweep file's text describes; `SweepFileError` (FILE:LINE: field: problem) if it
    cannot be used. ``validate`` also builds every case's batch spec (imports torch) so that a pool
    too small or an unsupported head dim is reported at its line too."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = re.search(r"line (\d+)", str(error))
        raise SweepFileError(path, int(match[1]) if match else 0, "", f"not valid TOML: {error}") from None
    lines = KeyLines(text)
    top = _Table(data, (), "the file", path, lines)
    top.check_keys(TOP_KEYS)
    name = top.get("name", _name) or re.sub(r"[^A-Za-z0-9_.+-]+", "-", Path(path).stem) or "sweep-file"
    top.get("description", _text)

    defaults: dict[str, Any] = {}
    defaults_table = None
    if "defaults" in data:
        if not isinstance(data["defaults"], dict):
            raise top.error("defaults", "must be a table: [defaults]")
        defaults_table = _Table(data["defaults"], ("defaults",), "[defaults]", path, lines)
        defaults_table.check_keys(DEFAULTS_KEYS)
        defaults = _fields(defaults_table)

    cases: list[Case] = []
    origin: dict[str, _Table] = {}
    entries = data.get("case", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise top.error("case", "must be an array of tables: [[case]]")
    for index, entry in enumerate(entries):
        table = _Table(entry, ("case", index), f"case #{index + 1}", path, lines)
        for case in _named_cases(table, defaults):
            if case.name in origin and origin[case.name] is not table:
                raise table.error("name", f"case name {case.name!r} is already used by {origin[case.name].label}")
            origin[case.name] = table
            cases.append(case)

    axes: dict[str, Axes] = {}
    all_axes = data.get("axes", {})
    if not isinstance(all_axes, dict):
        raise top.error("axes", "must hold tables such as [axes.decode]")
    axes_tables: dict[str, _Table] = {}
    for workload, entry in all_axes.items():
        table = _Table(entry if isinstance(entry, dict) else {}, ("axes", workload), f"[axes.{workload}]", path, lines)
        if workload not in AXES_WORKLOADS:
            raise table.error(None, f"unknown workload {workload!r}; choose one of {', '.join(AXES_WORKLOADS)}")
        if not isinstance(entry, dict):
            raise table.error(None, "must be a table")
        axes[workload] = _axes(table, workload, defaults)
        axes_tables[workload] = table
    if not cases and not axes:
        raise SweepFileError(path, 0, "", "has no cases: add [[case]] entries or [axes.decode] / [axes.prefill] / "
                                          "[axes.spec-decode] / [axes.mixed] tables")
    sweep = Sweep(name=name, axes=axes, cases=tuple(cases), source=str(path))
    _check_names(sweep, origin, axes_tables, path)
    if validate:
        _validate(sweep, origin, axes_tables, defaults_table)
    return sweep


def _axes_table_of(case: Case, sweep: Sweep, axes_tables: dict[str, _Table]) -> _Table | None:
    for workload, axes in sweep.axes.items():
        if any(other.name == case.name for other in cases_from_axes(workload, axes)):
            return axes_tables[workload]
    return None


def _check_names(sweep: Sweep, origin: dict[str, _Table], axes_tables: dict[str, _Table], path: str) -> None:
    try:
        sweep.all_cases()
    except ValueError:
        names = {case.name: case for case in sweep.axes_cases()}
        for case in sweep.cases:
            if case.name in names and names[case.name] != case:
                raise origin[case.name].error("name", f"case {case.name!r} is also made by the axes, with other "
                                                      "fields; choose another name") from None
        raise


_SPEC_FIELD_KEYS = {"pool_pages": ("pool_pages",), "pool_gib": ("pool_gib",), "page_size": ("page_size", "page_sizes"),
                    "head_dim": ("heads", "model", "models"), "num_q_heads": ("heads", "model", "models"),
                    "num_kv_heads": ("heads", "model", "models"), "dtype": ("dtype", "dtypes"),
                    "sliding_window": ("sliding_window", "model", "models", "causal"),
                    "softcap": ("softcap", "model", "models"), "sinks": ("sinks", "model", "models"),
                    "kv_dtype": ("kv_dtype",), "kv_scale": ("kv_scale", "kv_dtype")}


def _validate(sweep: Sweep, origin: dict[str, _Table], axes_tables: dict[str, _Table],
              defaults: _Table | None) -> None:
    """Build every case's spec; a BatchValidationError becomes a SweepFileError at the case's table."""
    from adapters.validation import BatchValidationError

    for case in sweep.all_cases():
        try:
            case.spec()
        except BatchValidationError as error:
            table = origin.get(case.name) or _axes_table_of(case, sweep, axes_tables)
            if table is None:
                raise
            keys = _SPEC_FIELD_KEYS.get(error.field, ("grammar", "contexts", "q_lens"))
            for where in (table, defaults):
                key = next((k for k in keys if where is not None and k in where.data), None)
                if key:
                    raise where.error(key, f"case {case.name}: {error}") from None
            raise table.error(None, f"case {case.name}: {error}") from None


def load_sweep_file(path: str | Path, *, validate: bool = True) -> Sweep:
    """Read a sweep file (see the module docstring); `SweepFileError` names the file, line and field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SweepFileError(str(path), 0, "", f"cannot be read: {error.strerror or error}") from None
    return parse_sweep_text(text, str(path), validate=validate)

