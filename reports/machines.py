"""Several machines in one view: results folders from different hosts (and releases) side by side.

Each folder is one machine: a host runs ``paged-bench --out results/<machine>`` itself and the folders
are merged afterwards (committed or synced). This module matches the folders cell by cell on
``cell_id`` (a hash of the backend and every case field, the same on any machine) and gives, per cell,
each machine's median time, its ratio to the first machine (the reference), and each machine's share
of ITS OWN measured ceilings: the larger of ``pct_matmul_ceiling`` and ``pct_copy_ceiling`` (the
binding ceiling, as `reports.plots.roofline_share`). The share is the fair figure between an H100 and
an H200: a kernel that scales with the hardware keeps its share while its time changes.

A cell stands out when its share on a machine differs from its share on the reference by more than
a band (`SHARE_RULE`): ``band = max(SHARE_THRESHOLD, noise_band(iqr_ref, iqr))`` (the noise band of
`reports.compare`, so a noisy cell needs a larger difference); "lower share" when
``share / share_ref < 1 / (1 + band)``, "higher share" when ``> 1 + band``.

Collisions are found and reported, never silently merged: the same folder given twice (shown once),
two folders sharing a run id (one run's output copied into both), an env id naming two different
environments (the id is a hash of the environment, so this should not happen). Two hosts with the
same GPU model and software share an env id by design (the hash leaves the host out): that is noted,
and the machines are told apart by host.

Torch-free: records.*, pandas, numpy, matplotlib (Agg), jinja2 and reports.* only.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import pandas as pd

from reports.compare import NOISE_K, noise_band
from reports.model import OK, ResultSet, load_results, workload_rank
from reports.templating import environment
from reports.text import compact, is_missing, text_table

__all__ = ["SHARE_THRESHOLD", "SHARE_RULE", "Machine", "Collision", "MachineSet", "machine_set", "load_machines",
           "machine_labels", "find_collisions", "machine_figures", "render_machines_html", "render_machines_report",
           "format_machines_text", "default_machines_out"]

SHARE_THRESHOLD = 0.25
"""Smallest relative difference of share-of-ceiling between two machines that makes a cell stand out.
Repeated runs on one machine move a cell by a few percent (results/h100-repeat: 0.97-1.04) and machines
of one model by a few more; 25 % is well clear of that and well below a planted 2x."""
SHARE_RULE = (f"band = max({SHARE_THRESHOLD:.0%}, max(5%, {NOISE_K} x sqrt(iqr_ref^2 + iqr^2))); a cell stands out when "
              "its share of its machine's binding ceiling, divided by its share on the reference machine, is above "
              "1 + band (higher share) or below 1/(1 + band) (lower share)")
MACHINE_COLORS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#7f7f7f", "#b8a21a"]
"""Okabe-Ito colours, one per machine in the order given (the reference first)."""
HIGHLIGHT = "#ffd9d9"

STATUS_ORDER = ("lower share", "higher share", "verdict differs", "absent", "not on ref", "no share", "same",
                "untimed")
STANDS_OUT = ("lower share", "higher share")
STATUS_HELP = {
    "lower share": "timed on both; this machine reaches a smaller share of its own ceiling than the reference does",
    "higher share": "timed on both; this machine reaches a larger share of its own ceiling than the reference does",
    "verdict differs": "the cell ends differently here and on the reference (e.g. ok on one, unsupported on the other)",
    "absent": "the reference has this cell, this machine's folder does not",
    "not on ref": "this machine's folder has the cell, the reference's does not",
    "no share": "timed on both, but a ceiling was not recorded on one of them: only the times compare",
    "same": "timed on both; the shares agree within the band",
    "untimed": "neither machine timed the cell (same verdict on both)",
}
IDENTITY = ("cell_id", "backend", "case", "workload", "batch_size", "q_len", "context", "page_size")
PER_MACHINE = ("verdict", "reason", "median_us", "iqr_pct", "tflops", "tbps", "share", "bound")
VOLATILE = ("host", "date", "run_id", "started_at", "env_id")
"""Provenance fields that differ between runs of one environment (the env id hash leaves them out)."""
SOURCE = Union[ResultSet, str, os.PathLike]


# --- one machine -------------------------------------------------------------------------------
def _distinct(values) -> list[str]:
    return [str(v) for v in dict.fromkeys(values) if v not in (None, "") and not is_missing(v)]


def _field(results: ResultSet, *patterns: str) -> list[str]:
    """Distinct values of the first flattened provenance field matching one of ``patterns`` (regexes, in order)."""
    records = results.provenance_records()
    keys = list(dict.fromkeys(key for record in records for key in record))
    for pattern in patterns:
        matched = [key for key in keys if re.search(pattern, key)]
        if matched:
            return _distinct(record.get(key) for record in records for key in matched)
    return []


def gpu_names(results: ResultSet) -> list[str]:
    """The GPU models a folder's runs recorded (provenance ``gpu``, else the ceilings' ``gpu``)."""
    names = _field(results, r"^gpu$")
    return names or _distinct(c.get("gpu") for c in results.runs["ceilings"] if isinstance(c, dict))


def _short_gpu(name: str) -> str:
    return re.sub(r"^NVIDIA\s+", "", name)


def _ceiling_text(results: ResultSet, key: str, unit: str, digits: int) -> str:
    values = [float(c[key]) for c in results.runs["ceilings"] if isinstance(c, dict) and c.get(key)]
    if not values:
        return "not measured"
    text = f"{values[-1]:.{digits}f} {unit}"
    if len(values) > 1 and max(values) > min(values) * 1.005:
        text += f" (runs: {min(values):.{digits}f}–{max(values):.{digits}f})"
    return text


FACTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hosts", (r"^host$",)),
    ("driver", (r"^driver$",)),
    ("CUDA", (r"^cuda$",)),
    ("torch", (r"^torch$", r"^packages\.torch$")),
    ("commit", (r"^commit$",)),
    ("env label", (r"^env_label$",)),
    ("env id", (r"^env_id$",)),
)


@dataclass
class Machine:
    """One results folder seen as one machine: its ``index`` (0 = the reference), display ``label``
    and the loaded `ResultSet`."""

    index: int
    label: str
    results: ResultSet

    @property
    def color(self) -> str:
        return MACHINE_COLORS[self.index % len(MACHINE_COLORS)]

    @property
    def source(self) -> str:
        return str(self.results.source) if self.results.source is not None else ""

    @property
    def gpus(self) -> list[str]:
        return gpu_names(self.results)

    @property
    def hosts(self) -> list[str]:
        return _field(self.results, r"^host$")

    @property
    def run_ids(self) -> set[str]:
        return set(_distinct([*self.results.runs["run_id"], *self.results.rows["run_id"]]))

    @property
    def has_ceilings(self) -> bool:
        return self.results.ceilings() is not None

    def facts(self) -> dict[str, str]:
        """The machine's line of the machines table: GPU, ceilings, software, commit, runs and cells."""
        results = self.results
        rows = results.rows
        facts = {"GPU": " | ".join(self.gpus) or "unknown",
                 "bf16 matmul ceiling": _ceiling_text(results, "matmul_bf16_tflops", "TFLOP/s", 0),
                 "copy ceiling": _ceiling_text(results, "copy_tbps", "TB/s", 2)}
        for name, patterns in FACTS:
            facts[name] = " | ".join(_field(results, *patterns))
        # every library version the backends reported with their rows (no backend is named here)
        reported: dict[str, list[str]] = {}
        for versions in results.backend_versions().values():
            for key, value in versions.items():
                if not key.endswith("_build") and value not in reported.setdefault(key, []):
                    reported[key].append(value)
        facts["backend versions"] = ", ".join(f"{key} {' | '.join(values)}" for key, values in sorted(reported.items()))
        facts["runs"] = str(len(results.runs))
        facts["cells"] = f"{len(rows)} ({int((rows['verdict'] == OK).sum())} ok)"
        facts["folder"] = self.source
        return {key: value or "—" for key, value in facts.items()}


def machine_labels(sets: Sequence[ResultSet]) -> list[str]:
    """A display name per folder: its explicit ``name`` if set, else its GPU model ('H100 80GB HBM3');
    folders sharing a name get the first qualifier that tells them apart: host, env label, folder
    name, commit ('H100 80GB HBM3 (host-a)'), else their position."""
    bases = []
    for results in sets:
        gpus = [_short_gpu(name) for name in gpu_names(results)]
        fallback = results.source.name if results.source is not None else results.label
        bases.append(results.name or (" + ".join(gpus) if gpus else fallback))
    qualifiers = (lambda r: ", ".join(_field(r, r"^host$")), lambda r: ", ".join(_field(r, r"^env_label$")),
                  lambda r: r.source.name if r.source is not None else "", lambda r: ", ".join(_field(r, r"^commit$")))
    labels = list(bases)
    for base in {b for b in bases if bases.count(b) > 1}:
        group = [i for i, b in enumerate(bases) if b == base]
        for qualifier in qualifiers:
            values = [qualifier(sets[i]) for i in group]
            if all(values) and len(set(values)) == len(values):
                for i, value in zip(group, values):
                    labels[i] = f"{base} ({value})"
                break
        else:
            for i in group:
                labels[i] = f"{base} (#{i + 1})"
    return labels


# --- collisions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Collision:
    """Something that stops folders merging cleanly. ``severity`` 'error': should never happen and
    makes the view wrong (counted twice, mislabelled); 'note': expected, but worth knowing."""

    kind: str
    severity: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def _stable_provenance(results: ResultSet) -> dict[str, dict[str, Any]]:
    """env_id -> the provenance of its first run, without the fields the env id hash leaves out."""
    found: dict[str, dict[str, Any]] = {}
    for run in results.runs.to_dict("records"):
        env = str(run.get("env_id") or (run.get("provenance") or {}).get("env_id") or "")
        if env and env not in found and run.get("provenance"):
            found[env] = {k: v for k, v in run["provenance"].items() if k not in VOLATILE}
    return found


def _listed(items, limit: int = 3) -> str:
    items = sorted(items)
    return ", ".join(items[:limit]) + (f", … ({len(items)} in all)" if len(items) > limit else "")


def _pair_collisions(a: Machine, b: Machine) -> list[Collision]:
    found = []
    shared = a.run_ids & b.run_ids
    if shared:
        why = ("the two folders hold the same runs: one is a copy of the other, so one machine's measurements "
               "appear as two machines" if a.run_ids == b.run_ids else
               "one run's output was copied into both folders, so its cells count for both machines")
        found.append(Collision("run id", "error", f"“{a.label}” and “{b.label}” share run id(s) {_listed(shared)}: "
                                                  f"{why}. Run ids are unique per run; keep each run in one folder."))
    prov_a, prov_b = _stable_provenance(a.results), _stable_provenance(b.results)
    for env in sorted(set(prov_a) & set(prov_b)):
        keys = sorted(set(prov_a[env]) | set(prov_b[env]))
        differing = [k for k in keys if prov_a[env].get(k) != prov_b[env].get(k)]
        if differing:
            found.append(Collision("env id", "error", f"env id {env} names two different environments in “{a.label}” "
                                   f"and “{b.label}” (they differ in {_listed(differing, 5)}). An env id is a hash of "
                                   "the environment, so this should not happen: a folder was edited by hand, or "
                                   "written by another version of the suite."))
            continue
        hosts_a, hosts_b = set(a.hosts), set(b.hosts)
        if hosts_a and hosts_b and hosts_a.isdisjoint(hosts_b):
            found.append(Collision("env id", "note", f"“{a.label}” and “{b.label}” share env id {env}: the same GPU "
                                   f"model and software on hosts {_listed(hosts_a)} and {_listed(hosts_b)} (the env id "
                                   "leaves the host out). Two machines of one environment, told apart by host."))
        else:
            found.append(Collision("env id", "note", f"“{a.label}” and “{b.label}” share env id {env} on the same "
                                   f"host ({_listed(hosts_a & hosts_b or hosts_a or hosts_b)}): repeated runs of one "
                                   "machine rather than two machines."))
    return found


def _folder_notes(machine: Machine) -> list[Collision]:
    notes = []
    if len(machine.results.runs) == 0:
        notes.append(Collision("no run record", "note", f"“{machine.label}” has no runs.jsonl record: its GPU, host "
                               "and software are unknown (labelled by its folder)."))
    if len(machine.gpus) > 1 or len(machine.hosts) > 1:
        notes.append(Collision("mixed folder", "note", f"“{machine.label}” holds runs of several "
                               f"{'GPU models' if len(machine.gpus) > 1 else 'hosts'} "
                               f"({_listed(machine.gpus if len(machine.gpus) > 1 else machine.hosts)}): each cell is "
                               "still normalised by the ceilings of its own run, but one folder per host keeps "
                               "machines apart."))
    rows = machine.results.ok_rows
    if not machine.has_ceilings and len(rows) and rows[["pct_matmul_ceiling", "pct_copy_ceiling"]].isna().all().all():
        notes.append(Collision("no ceilings", "note", f"“{machine.label}” recorded no ceilings: its shares of ceiling "
                               "are unknown, so only its times compare."))
    return notes


def find_collisions(machines: Sequence[Machine]) -> list[Collision]:
    """Run ids shared between folders, env ids naming two environments or shared across hosts, and
    folders that mix machines or lack run records or ceilings (errors first)."""
    found = [c for a, b in itertools.combinations(machines, 2) for c in _pair_collisions(a, b)]
    found += [note for machine in machines for note in _folder_notes(machine)]
    return sorted(found, key=lambda c: c.severity != "error")


def _unique_sets(sets: Sequence[ResultSet]) -> tuple[list[ResultSet], list[Collision]]:
    """The sets with any folder given a second time left out, and a collision for each."""
    kept, seen, found = [], {}, []
    for position, results in enumerate(sets, 1):
        key = str(Path(results.source).resolve()) if results.source is not None else f"id:{id(results)}"
        if key in seen:
            where = results.source if results.source is not None else "the same result set"
            found.append(Collision("same folder", "error", f"{where} was given twice (arguments {seen[key]} and "
                                   f"{position}): shown once. A machine compared with itself says nothing."))
            continue
        seen[key] = position
        kept.append(results)
    return kept, found


# --- the cells ----------------------------------------------------------------------------------
def _distance(ratio: Any) -> float:
    """How far a ratio is from 1 on a log scale (0 for a missing one)."""
    return abs(math.log(ratio)) if not is_missing(ratio) and ratio > 0 else 0.0


def _machine_cells(results: ResultSet) -> dict[str, dict[str, Any]]:
    """cell_id -> identity fields and the per-machine figures (share and bound of ok rows only)."""
    cells = {}
    for row in results.rows.to_dict("records"):
        cell = str(row.get("cell_id") or "")
        if not cell or cell == "nan":
            continue
        timed = row["verdict"] == OK and not is_missing(row["median_us"])
        matmul, copy = row.get("pct_matmul_ceiling"), row.get("pct_copy_ceiling")
        share = bound = None
        if timed and not is_missing(matmul) and not is_missing(copy):
            share, bound = (matmul, "compute") if matmul >= copy else (copy, "memory")
        record = {key: row.get(key) for key in IDENTITY}
        record.update(verdict=row["verdict"], reason=row["reason"], median_us=row["median_us"] if timed else None,
                      iqr_pct=row["iqr_pct"] if timed else None, tflops=row["tflops"] if timed else None,
                      tbps=row["tbps"] if timed else None, share=share, bound=bound)
        cells[cell] = record
    return cells


def _versus_reference(ref: dict | None, other: dict | None, threshold: float) -> dict[str, Any]:
    """One machine's cell against the reference's: time ratio, share ratio, band and status."""
    out = {"ratio": None, "share_ratio": None, "band": None}
    if ref is None:
        return {**out, "status": "not on ref"}
    if other is None:
        return {**out, "status": "absent"}
    ref_timed, timed = ref["median_us"] is not None, other["median_us"] is not None
    if not (ref_timed and timed):
        same = ref["verdict"] == other["verdict"] and not (ref_timed or timed)
        return {**out, "status": "untimed" if same else "verdict differs"}
    out["ratio"] = other["median_us"] / ref["median_us"] if ref["median_us"] > 0 else None
    if ref["share"] is None or other["share"] is None or not ref["share"] > 0:
        return {**out, "status": "no share"}
    ratio = other["share"] / ref["share"]
    band = max(threshold, noise_band(ref["iqr_pct"], other["iqr_pct"]))
    status = "lower share" if ratio < 1 / (1 + band) else "higher share" if ratio > 1 + band else "same"
    return {**out, "share_ratio": ratio, "band": band, "status": status}


def _cell_frame(machines: Sequence[Machine], threshold: float) -> pd.DataFrame:
    """One row per cell_id of any machine: IDENTITY, ``<field>_<i>`` for each PER_MACHINE field and
    machine i, ``ratio_<k>``, ``share_ratio_<k>``, ``band_<k>``, ``status_<k>`` for each machine k > 0,
    ``present`` (labels of the machines that have the cell), ``on_all`` and the overall ``status``
    (the first of STATUS_ORDER among the machines' statuses)."""
    per = [_machine_cells(m.results) for m in machines]
    ids = list(dict.fromkeys(cell for cells in per for cell in cells))
    records = []
    for cell in ids:
        first = next(cells[cell] for cells in per if cell in cells)
        record = {key: first[key] for key in IDENTITY}
        for i, cells in enumerate(per):
            record.update({f"{key}_{i}": (cells.get(cell) or {}).get(key) for key in PER_MACHINE})
        statuses = []
        for k in range(1, len(machines)):
            versus = _versus_reference(per[0].get(cell), per[k].get(cell), threshold)
            record.update({f"{key}_{k}": value for key, value in versus.items()})
            statuses.append(versus["status"])
        present = [m.label for m, cells in zip(machines, per) if cell in cells]
        record.update(present=", ".join(present), on_all=len(present) == len(machines),
                      status=min(statuses, key=STATUS_ORDER.index) if statuses else "")
        records.append(record)
    columns = [*IDENTITY, *(f"{key}_{i}" for i in range(len(machines)) for key in PER_MACHINE),
               *(f"{key}_{k}" for k in range(1, len(machines)) for key in ("ratio", "share_ratio", "band", "status")),
               "present", "on_all", "status"]
    frame = pd.DataFrame(records, columns=columns)
    for column in [f"{key}_{i}" for i in range(len(machines)) for key in ("verdict", "reason", "bound")]:
        frame[column] = frame[column].map(lambda value: "" if is_missing(value) else str(value))  # "" = absent
    if len(frame):
        frame = frame.assign(_k=workload_rank(frame["workload"]))
        frame = frame.sort_values(["_k", "page_size", "batch_size", "q_len", "context", "case", "backend"])
        frame = frame.drop(columns="_k").reset_index(drop=True)
    return frame


@dataclass
class MachineSet:
    """Several machines matched cell by cell: ``machines`` (the first is the reference), ``cells``
    (see `_cell_frame`), ``collisions`` and the share ``threshold`` used."""

    machines: list[Machine]
    cells: pd.DataFrame
    collisions: list[Collision] = field(default_factory=list)
    threshold: float = SHARE_THRESHOLD

    @property
    def reference(self) -> Machine:
        return self.machines[0]

    @property
    def errors(self) -> list[Collision]:
        return [c for c in self.collisions if c.severity == "error"]

    @property
    def workloads(self) -> list[str]:
        return list(dict.fromkeys(self.cells["workload"])) if len(self.cells) else []

    def stand_out(self) -> pd.DataFrame:
        """Cells whose share on some machine is outside the band, the largest differences first."""
        cells = self.cells[self.cells["status"].isin(STANDS_OUT)] if len(self.cells) else self.cells
        if not len(cells):
            return cells
        ratios = cells[[f"share_ratio_{k}" for k in range(1, len(self.machines))]].astype(float)
        distance = ratios.apply(lambda column: column.map(_distance)).max(axis=1)
        return cells.assign(_d=distance).sort_values("_d", ascending=False).drop(columns="_d")

    def _numbers(self, column: str) -> pd.Series:
        if not len(self.cells) or column not in self.cells:
            return pd.Series(dtype=float)
        return pd.to_numeric(self.cells[column], errors="coerce").dropna()

    def with_status(self, *statuses: str) -> pd.DataFrame:
        """Cells whose status on some machine is one of ``statuses``."""
        if not len(self.cells) or len(self.machines) < 2:
            return self.cells.iloc[0:0]
        mask = pd.concat([self.cells[f"status_{k}"].isin(statuses) for k in range(1, len(self.machines))], axis=1)
        return self.cells[mask.any(axis=1)]

    def partial(self) -> pd.DataFrame:
        """Cells that some machine's folder lacks."""
        return self.cells[~self.cells["on_all"].astype(bool)] if len(self.cells) else self.cells

    def pair_summaries(self) -> list[dict[str, Any]]:
        """Per machine after the reference: how many cells compare, the median time and share ratios
        over the cells timed on both, and the count of each status."""
        out = []
        for machine in self.machines[1:]:
            k = machine.index
            statuses = self.cells[f"status_{k}"] if len(self.cells) else pd.Series(dtype=str)
            ratio, shares = self._numbers(f"ratio_{k}"), self._numbers(f"share_ratio_{k}")
            out.append({"machine": machine.label, "index": k, "timed_both": int(len(ratio)),
                        "median_time_ratio": float(ratio.median()) if len(ratio) else None,
                        "median_share_ratio": float(shares.median()) if len(shares) else None,
                        "stand_out": int(statuses.isin(STANDS_OUT).sum()),
                        "counts": {s: int((statuses == s).sum()) for s in STATUS_ORDER if (statuses == s).any()}})
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest: machines, collisions, the rule, per-machine summaries and the cells that stand out."""
        standing = self.stand_out()
        keep = ["backend", "case", "status",
                *(f"{key}_{i}" for i in range(len(self.machines)) for key in ("median_us", "share")),
                *(f"{key}_{k}" for k in range(1, len(self.machines)) for key in ("ratio", "share_ratio", "status"))]
        return {"machines": [{"label": m.label, "source": m.source, **m.facts()} for m in self.machines],
                "reference": self.reference.label, "rule": SHARE_RULE, "threshold": self.threshold,
                "collisions": [c.as_dict() for c in self.collisions], "pairs": self.pair_summaries(),
                "cells": int(len(self.cells)), "partial": int(len(self.partial())),
                "stand_out": standing[keep].to_dict("records") if len(standing) else []}


def machine_set(sources: Sequence[SOURCE], *, threshold: float = SHARE_THRESHOLD) -> MachineSet:
    """Match several result sets (or folders, loaded with `load_results`) cell by cell; the first is
    the reference machine. A folder given twice is kept once and reported as a collision."""
    sets = [source if isinstance(source, ResultSet) else load_results(source) for source in sources]
    if not sets:
        raise ValueError("machine_set needs at least one results folder")
    sets, collisions = _unique_sets(sets)
    machines = [Machine(i, label, results) for i, (label, results) in enumerate(zip(machine_labels(sets), sets))]
    return MachineSet(machines=machines, cells=_cell_frame(machines, threshold),
                      collisions=collisions + find_collisions(machines), threshold=threshold)


def load_machines(paths: Sequence[str | os.PathLike], *, threshold: float = SHARE_THRESHOLD) -> MachineSet:
    """`machine_set` of results folders given by path."""
    return machine_set([load_results(path) for path in paths], threshold=threshold)


def default_machines_out(paths: Sequence[str | os.PathLike]) -> Path:
    """Where the page goes when no path is given: ``machines.html`` in the folders' common parent."""
    folders = [Path(p).resolve() for p in paths]
    folders = [f.parent if f.is_file() else f for f in folders]
    common = Path(os.path.commonpath(folders))
    return (common.parent if len(set(folders)) > 1 and common in folders else common) / "machines.html"


# --- figures -------------------------------------------------------------------------------------
def _case_labels(cells: pd.DataFrame, cases: list[str]) -> list[str]:
    from reports.plots import short_case

    first = {row["case"]: row for row in cells.drop_duplicates("case").to_dict("records")}
    return [short_case(first[case]) for case in cases]


def _label_stand_outs(ax, own: pd.DataFrame, cases: list[str], mset: MachineSet, top: float) -> None:
    """Above each cell that stands out, its share ratio against the reference (one per machine)."""
    for x, case in enumerate(cases):
        if case not in own.index or own.at[case, "status"] not in STANDS_OUT:
            continue
        ratios = [own.at[case, f"share_ratio_{m.index}"] for m in mset.machines[1:]
                  if own.at[case, f"status_{m.index}"] in STANDS_OUT]
        ax.text(x, top * 0.985, "\n".join(f"×{r:.2f}" for r in ratios), ha="center", va="top", fontsize=6.5,
                color="#b00", fontweight="bold")


def _bar_figure(mset: MachineSet, workload: str, metric: str) -> Any:
    """Rows = backends, x = the workload's cases, one bar per machine. ``metric`` 'median_us' (log
    scale) or 'share' (% of the machine's binding ceiling). Cells that stand out are shaded; a cross
    at the foot marks a machine that has the cell but did not time it."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    from reports.plots import compact_tick

    cells = mset.cells[mset.cells["workload"] == workload]
    values = [f"{metric}_{m.index}" for m in mset.machines]
    backends = [b for b in sorted(set(cells["backend"]))
                if cells.loc[cells["backend"] == b, values].apply(pd.to_numeric, errors="coerce").notna().any().any()]
    if not backends:
        return None
    cases = list(dict.fromkeys(cells["case"]))
    n = len(mset.machines)
    width = min(12.5, max(5.5, 2.0 + 0.3 * len(cases) * (1 + 0.25 * max(0, n - 2))))
    fig, axes = plt.subplots(len(backends), 1, squeeze=False, sharex=True, layout="constrained",
                             figsize=(width, 1.45 * len(backends) + 1.6))
    bar = 0.8 / n
    for ax, backend in zip(axes[:, 0], backends):
        own = cells[cells["backend"] == backend].drop_duplicates("case", keep="last").set_index("case")
        for x, case in enumerate(cases):
            if case in own.index and own.at[case, "status"] in STANDS_OUT:
                ax.axvspan(x - 0.5, x + 0.5, color=HIGHLIGHT, linewidth=0, zorder=0)
        for machine in mset.machines:
            i, offset = machine.index, -0.4 + bar * (machine.index + 0.5)
            present = [(x, own.at[case, f"{metric}_{i}"]) for x, case in enumerate(cases)
                       if case in own.index and own.at[case, f"verdict_{i}"]]
            timed = [(x, v) for x, v in present if not is_missing(v)]
            ax.bar([x + offset for x, _ in timed], [float(v) for _, v in timed], width=bar, color=machine.color, zorder=2)
            missed = [x + offset for x, v in present if is_missing(v)]
            ax.plot(missed, [0.03] * len(missed), linestyle="", marker="x", markersize=3.5, color=machine.color,
                    transform=ax.get_xaxis_transform(), zorder=3)
        shown = pd.to_numeric(own[values].stack(), errors="coerce").dropna()
        if metric == "median_us":
            ax.set_yscale("log")
            decades = math.log10(float(shown.max()) / float(shown.min())) if len(shown) and shown.min() > 0 else 0.0
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)))
            ax.yaxis.set_major_formatter(FuncFormatter(compact_tick))
            ax.yaxis.set_minor_locator(NullLocator())
            if len(shown) and shown.min() > 0:
                ax.set_ylim(float(shown.min()) / 2.5, float(shown.max()) * 1.6)
            ax.set_ylabel("median µs")
        else:
            top = max(110.0, float(shown.max() if len(shown) else 0) * 1.12)
            ax.axhline(100, color="#333", linewidth=0.8, linestyle=(0, (4, 3)))
            ax.set_ylim(0, top)
            ax.set_ylabel("% of ceiling")
            _label_stand_outs(ax, own, cases, mset, top)
        ax.set_title(backend, loc="left")
        ax.grid(axis="x", visible=False)
        ax.set_xlim(-0.6, len(cases) - 0.4)
    axes[-1, 0].set_xticks(range(len(cases)))
    axes[-1, 0].set_xticklabels(_case_labels(cells, cases), rotation=55, ha="right", rotation_mode="anchor", fontsize=6.5)
    handles = [Patch(color=m.color, label=m.label) for m in mset.machines]
    handles.append(Patch(color=HIGHLIGHT, label="share stands out"))
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 4), frameon=False)
    return fig


def _scatter_figure(mset: MachineSet) -> Any:
    """One panel per machine after the reference: each timed cell's share on the reference (x) against
    its share here (y), log-log, the band around the diagonal dashed; cells that stand out ringed red
    and named (the twelve farthest)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from reports.plots import backend_styles

    others = mset.machines[1:]
    pairs = [(m, mset.cells.dropna(subset=[f"share_ratio_{m.index}"])) for m in others]
    pairs = [(m, cells) for m, cells in pairs if len(cells)]
    if not pairs:
        return None
    styles = backend_styles(sorted(set(mset.cells["backend"])))
    width = min(4.6 * len(pairs) + 1.2, 12.5)
    fig, axes = plt.subplots(1, len(pairs), squeeze=False, layout="constrained", figsize=(width, 4.8))
    for ax, (machine, cells) in zip(axes[0], pairs):
        x, y = cells["share_0"].astype(float), cells[f"share_{machine.index}"].astype(float)
        low, high = float(min(x.min(), y.min())) / 1.5, float(max(x.max(), y.max())) * 1.5
        line = [low, high]
        ax.plot(line, line, color="#333", linewidth=0.8)
        for factor in (1 + mset.threshold, 1 / (1 + mset.threshold)):
            ax.plot(line, [v * factor for v in line], color="#999", linewidth=0.8, linestyle=(0, (4, 3)))
        for backend, style in styles.items():
            own = (cells["backend"] == backend).to_numpy()
            if own.any():
                ax.scatter(x[own], y[own], s=16, color=style.color, marker=style.marker, linewidths=0, zorder=3)
        out = cells[cells[f"status_{machine.index}"].isin(STANDS_OUT)]
        ax.scatter(out["share_0"], out[f"share_{machine.index}"], s=70, facecolors="none", edgecolors="#d62728",
                   linewidths=1.3, zorder=4)
        far = out.assign(_d=out[f"share_ratio_{machine.index}"].map(_distance)).nlargest(12, "_d")
        for row in far.to_dict("records"):
            ax.annotate(f"{row['backend']} {row['case']}", (row["share_0"], row[f"share_{machine.index}"]),
                        xytext=(5, -3), textcoords="offset points", fontsize=6, color="#b00")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_box_aspect(1)
        ax.set_xlabel(f"% of ceiling on {mset.reference.label}")
        ax.set_ylabel(f"% of ceiling on {machine.label}")
    handles = [Line2D([], [], marker=style.marker, linestyle="", color=style.color, label=b)
               for b, style in styles.items()
               if b in set(mset.cells["backend"]) and mset.cells.loc[mset.cells["backend"] == b, "share_0"].notna().any()]
    handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="#d62728",
                          label="stands out"))
    fig.legend(handles=handles, loc="outside upper center", ncol=max(1, min(len(handles), int(width / 1.35))),
               frameon=False)
    return fig


def machine_figures(mset: MachineSet) -> dict[str, Any]:
    """``overview``: the share scatter; ``workloads``: [(workload, [time figure, share figure])]."""
    import matplotlib.pyplot as plt

    from reports.plots import STYLE, Figure, slug, svg_of

    def figure(fig, figure_id: str, title: str, caption: str) -> list[Figure]:
        return [Figure(figure_id, title, caption, svg_of(fig, figure_id))] if fig is not None else []

    labels = " · ".join(m.label for m in mset.machines)
    with plt.rc_context(STYLE):
        overview = figure(_scatter_figure(mset), "plot-machines-shares", "Share of each machine's own ceiling, cell by cell",
                          f"Each dot is one cell timed on both machines. On the diagonal a cell uses both machines "
                          f"equally well; outside the dashed band (±{mset.threshold:.0%}) it stands out.")
        workloads = []
        for workload in mset.workloads:
            name = slug(workload)
            time = figure(_bar_figure(mset, workload, "median_us"), f"plot-machines-time-{name}",
                          f"{workload}: median time per cell on each machine",
                          f"Bars side by side: {labels}. Log scale; lower is faster. Shaded: the share stands out; "
                          "x: present but not timed.")
            share = figure(_bar_figure(mset, workload, "share"), f"plot-machines-share-{name}",
                           f"{workload}: share of each machine's own binding ceiling",
                           "The larger of % of the machine's measured bf16 matmul rate and % of its copy bandwidth; "
                           "100 % = that machine's ceiling, so machines of different speed compare fairly.")
            if time or share:
                workloads.append((workload, time + share))
    return {"overview": overview, "workloads": workloads}


# --- the page ------------------------------------------------------------------------------------
TEMPLATE = "machines.html.j2"
MACHINES_GLOSSARY = {
    "reference": "the first folder given; every ratio is against it",
    "share of ceiling": "the larger of pct_matmul_ceiling and pct_copy_ceiling: the cell's share of the binding "
                        "ceiling of the machine that measured it (its own measured bf16 matmul rate or copy bandwidth)",
    "time ×": "the cell's median time on this machine / on the reference (below 1: faster here)",
    "share ×": "the cell's share of ceiling on this machine / on the reference (below 1: this machine's hardware is "
               "used less well)",
    "band": SHARE_RULE,
    "run id": "one per run (start time and random suffix): never in two folders",
    "env id": "a hash of the environment (GPU model, software, commit, timer, label) without the host: shared by "
              "identical hosts, never by two different environments",
    **{f"status: {name}": text for name, text in STATUS_HELP.items()},
}


def _share_text(value: Any) -> str:
    return "" if is_missing(value) else f"{value:.1f}%"


def _ratio_text(value: Any) -> str:
    return "" if is_missing(value) else f"{value:.2f}×"


def _fact_table(machines: Sequence[Machine]) -> list[dict[str, Any]]:
    facts = [m.facts() for m in machines]
    return [{"field": key, "cells": [f[key] for f in facts], "varies": len({f[key] for f in facts}) > 1}
            for key in facts[0]]


def _provenance_table(machines: Sequence[Machine]) -> list[dict[str, Any]]:
    """Every flattened provenance field (distinct values of each machine's runs joined), one column per machine."""
    values = []
    for machine in machines:
        merged: dict[str, list[str]] = {}
        for record in machine.results.provenance_records():
            for key, value in record.items():
                if key not in ("run_id", "started_at", "date") and str(value) not in merged.setdefault(key, []):
                    merged[key].append(str(value))
        values.append({key: " | ".join(texts) for key, texts in merged.items()})
    keys = list(dict.fromkeys(key for v in values for key in v))
    return [{"field": key, "cells": [v.get(key, "") for v in values], "varies": len({v.get(key, "") for v in values}) > 1}
            for key in keys]


def _cell_view(mset: MachineSet, cells: pd.DataFrame) -> list[dict[str, Any]]:
    """Display rows: identity, the overall status and per machine its verdict, time, share and (after
    the reference) its ratios and status."""
    rows = []
    for record in cells.to_dict("records"):
        per = []
        for machine in mset.machines:
            i = machine.index
            per.append({"verdict": record[f"verdict_{i}"], "reason": record[f"reason_{i}"] or "",
                        "median_us": record[f"median_us_{i}"], "share": record[f"share_{i}"],
                        "bound": record[f"bound_{i}"] or "",
                        "ratio": record.get(f"ratio_{i}"), "share_ratio": record.get(f"share_ratio_{i}"),
                        "band": record.get(f"band_{i}"), "status": record.get(f"status_{i}", "")})
        rows.append({**{key: record[key] for key in IDENTITY}, "status": record["status"], "present": record["present"],
                     "on_all": record["on_all"], "per": per})
    return rows


def build_machines_context(mset: MachineSet, title: str = "") -> dict[str, Any]:
    """Everything the machines page shows, as plain data (figures already rendered to SVG)."""
    labels = [m.label for m in mset.machines]
    return {
        "title": title or "Paged-attention benchmark: " + " vs ".join(labels),
        "generated_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machines": mset.machines, "reference": mset.reference, "facts": _fact_table(mset.machines),
        "provenance": _provenance_table(mset.machines), "collisions": mset.collisions, "errors": mset.errors,
        "pairs": mset.pair_summaries(), "stand_out": _cell_view(mset, mset.stand_out()),
        "verdict_differs": _cell_view(mset, mset.with_status("verdict differs")),
        "partial": _cell_view(mset, mset.partial()), "cells": _cell_view(mset, mset.cells),
        "figures": machine_figures(mset), "rule": SHARE_RULE, "threshold": mset.threshold,
        "status_order": STATUS_ORDER, "stands_out": STANDS_OUT, "glossary": MACHINES_GLOSSARY,
    }


def _as_machine_set(sources: MachineSet | Sequence[SOURCE], threshold: float) -> MachineSet:
    return sources if isinstance(sources, MachineSet) else machine_set(sources, threshold=threshold)


def render_machines_html(sources: MachineSet | Sequence[SOURCE], title: str = "", *,
                         threshold: float = SHARE_THRESHOLD) -> str:
    from markupsafe import Markup

    mset = _as_machine_set(sources, threshold)
    return environment(share=_share_text, ratio=_ratio_text).get_template(TEMPLATE).render(
        markup=Markup, **build_machines_context(mset, title))


def render_machines_report(result_sets: MachineSet | Sequence[SOURCE], out_path: str | os.PathLike, title: str = "",
                           *, threshold: float = SHARE_THRESHOLD) -> Path:
    """Write the machines page (one self-contained HTML file) to ``out_path`` and return it.
    ``result_sets``: `ResultSet`s or results folders (the first is the reference), or a `MachineSet`."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_machines_html(result_sets, title, threshold=threshold), encoding="utf-8")
    return out_path


# --- the terminal --------------------------------------------------------------------------------
TEXT_FACTS = ("GPU", "hosts", "bf16 matmul ceiling", "copy ceiling", "torch", "commit", "runs", "cells")


def _cell_line(mset: MachineSet, record: dict[str, Any]) -> list[str]:
    line = [record["status"].upper(), record["backend"], record["case"]]
    for m in mset.machines:
        i = m.index
        timed = not is_missing(record[f"median_us_{i}"])
        line.append(compact(record[f"median_us_{i}"]) if timed else (record[f"verdict_{i}"] or "—"))
        line.append(_share_text(record[f"share_{i}"]))
    for m in mset.machines[1:]:
        line += [_ratio_text(record[f"ratio_{m.index}"]), _ratio_text(record[f"share_ratio_{m.index}"])]
    return line


def _cell_headers(mset: MachineSet) -> list[str]:
    headers = ["status", "backend", "case"]
    for i, _ in enumerate(mset.machines):
        headers += [f"[{i}] µs", f"[{i}] share"]
    for m in mset.machines[1:]:
        headers += [f"[{m.index}] time ×", f"[{m.index}] share ×"]
    return headers


def format_machines_text(sources: MachineSet | Sequence[SOURCE], *, show_all: bool = False, limit: int = 40,
                         threshold: float = SHARE_THRESHOLD) -> str:
    """The machines for a terminal: each machine's facts, collisions (loudly), each machine against the
    reference, the cells that stand out (every cell with ``show_all``) and the cells some machines lack."""
    mset = _as_machine_set(sources, threshold)
    lines = [f"Machines side by side ({len(mset.machines)}); reference [0] = {mset.reference.label}", ""]
    facts = [m.facts() for m in mset.machines]
    lines.append(text_table(["", *TEXT_FACTS], [[f"[{m.index}] {m.label}", *(f[k] for k in TEXT_FACTS)]
                                                 for m, f in zip(mset.machines, facts)]))
    lines.append("")
    for collision in mset.collisions:
        prefix = "COLLISION" if collision.severity == "error" else "note"
        lines.append(f"{prefix} ({collision.kind}): {collision.message}")
    if not mset.errors:
        lines.append("Collisions: none (run ids and env ids are each used by one environment).")
    lines += ["", f"Share band per cell: {SHARE_RULE}"]
    if len(mset.machines) == 1:
        lines.append("  One machine only: nothing to compare it with.")
    for pair in mset.pair_summaries():
        time, share = pair["median_time_ratio"], pair["median_share_ratio"]
        lines.append(f"  [{pair['index']}] {pair['machine']}: {pair['timed_both']} cells timed on both; median time × "
                     f"{_ratio_text(time) or '—'}, median share × {_ratio_text(share) or '—'}; "
                     f"{pair['stand_out']} stand out; "
                     + ", ".join(f"{n} {status}" for status, n in pair["counts"].items()))
    lines.append("")
    shown = mset.cells if show_all else mset.stand_out()
    title = "Every cell" if show_all else "Cells that stand out (share of own ceiling outside the band)"
    if len(shown):
        table = [_cell_line(mset, record) for record in shown.head(limit).to_dict("records")]
        lines += [f"{title} ({len(shown)}{', first ' + str(limit) if len(shown) > limit else ''}):",
                  text_table(_cell_headers(mset), table), ""]
    elif len(mset.machines) > 1:
        lines += ["No cell stands out: every share of ceiling agrees with the reference's within the band.", ""]
    differs = mset.with_status("verdict differs")
    if len(differs):
        lines.append(f"Cells whose verdict differs between machines ({len(differs)}):")
        for record in differs.head(limit).to_dict("records"):
            ends = [f"[{m.index}] {record[f'verdict_{m.index}'] or 'absent'}"
                    + (f": {record[f'reason_{m.index}']}" if record[f"reason_{m.index}"] else "") for m in mset.machines]
            lines.append(f"  {record['backend']} {record['case']}: " + "; ".join(ends))
        lines.append("")
    partial = mset.partial()
    if len(partial):
        sample = ", ".join(f"{r['backend']} {r['case']} (on {r['present']})" for r in partial.head(6).to_dict("records"))
        lines += [f"Cells missing on some machine: {len(partial)}: {sample}{', …' if len(partial) > 6 else ''}", ""]
    return "\n".join(lines).rstrip() + "\n"
