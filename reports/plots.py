"""The report's figures, drawn with matplotlib (Agg) and returned as inline SVG, so the page needs no
external file, network or JavaScript library. Each function takes the model (a `ResultSet` or a
`Comparison`) and returns `Figure`s; none reads files or knows about HTML.

Figures: latency and throughput per backend (decode against context, prefill against tokens per
sequence, one panel per page size and one row per batch size), speed-up against the baseline backend
(the one whose adapter declares itself the baseline: cuDNN) as heat maps, share of the roofline per
case, the cells with model features beside their plain twins, and the per-cell time ratio of a version
comparison. Which backend is the baseline and which
colour a backend gets come from the adapters' declarations stored with the results, never from names
written here.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import re
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from reports.capability import SYMBOLS  # noqa: E402
from reports.model import ResultSet, workload_kinds, workload_rank  # noqa: E402
from reports.tables import feature_cells  # noqa: E402

PALETTE = ["#1f6fb4", "#d9472b", "#8a55c2", "#e89b0c", "#14a3b8", "#8c564b", "#d6559c", "#6b6b6b", "#a6a62a"]
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
"""Backend markers; past these, `marker_shape` makes regular polygons, stars and asterisks without end."""
MARKER_GLYPHS = dict(zip(MARKERS, "●■▲◆▼✚✖◀▶⬟⬢★"))
"""The HTML pages' text stand-in for each marker (legends, cards, tables)."""
HATCHES = ("", "////", "....", "xxxx", "\\\\\\\\", "oo", "++", "----", "||||", "**", "OO", "//..")
"""Bar fills, parallel to `MARKERS`: bars of two backends that share a colour differ in hatching."""
DASHES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1))]
"""Line styles for a second variable within one backend (e.g. the cached context of prefill lines)."""
SPEEDUP_CMAP = "RdYlGn"
STATUS_COLORS = {"slower": "#d62728", "faster": "#2ca02c", "same": "#4c4c4c"}
STYLE = {
    "font.size": 8.5, "axes.titlesize": 9, "axes.labelsize": 8.5, "legend.fontsize": 8, "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.25, "grid.linewidth": 0.6, "figure.dpi": 96, "svg.fonttype": "path",
    "font.family": "DejaVu Sans", "axes.titleweight": "bold", "figure.titlesize": 10.5, "figure.titleweight": "bold",
}


@dataclass(frozen=True)
class Figure:
    """One rendered figure: a stable ``id``, a ``title``, a one-line ``caption`` and the ``svg`` markup."""

    id: str
    title: str
    caption: str
    svg: str


@dataclass(frozen=True)
class BackendStyle:
    """How one backend is drawn: ``color`` and ``marker`` (a pair no other backend of the figure has),
    ``hatch`` for bars, ``glyph`` for the HTML page."""

    color: str
    marker: str | tuple[int, int, int]
    hatch: str
    glyph: str


def marker_shape(index: int) -> str | tuple[int, int, int]:
    """The ``index``-th marker: `MARKERS`, then (sides, kind, 0) polygons (kind 0), stars (1) and asterisks
    (2) from 7 sides up, so any number of markers are distinct."""
    if index < len(MARKERS):
        return MARKERS[index]
    extra = index - len(MARKERS)
    return (7 + extra // 3, extra % 3, 0)


def _glyph(marker: str | tuple[int, int, int]) -> str:
    return MARKER_GLYPHS[marker] if isinstance(marker, str) else f"{'⬣✶✳'[marker[1]]}{marker[0]}"


def _preference(name: str) -> int:
    """A stable number from the backend's name (the same on every machine and run; not Python's hash)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def _first_free(start: int, size: int, taken) -> int | None:
    """The first index from ``start`` (cyclic over ``size``) not in ``taken``; None if all are."""
    return next(((start + k) % size for k in range(size) if (start + k) % size not in taken), None)


def backend_styles(backends: list[str], fixed: dict[str, str] | None = None) -> dict[str, BackendStyle]:
    """A style per backend, deterministic and independent of the input order; no two share (colour,
    marker), whatever their number. Backends declaring a colour (``fixed``) keep it. Others take the
    colour and marker their name prefers (`_preference`) unless a backend placed earlier (declared ones
    first, then by name) took it: the next unused colour while any is left, the next unused marker while
    any is left, and past those the first marker not yet paired with the colour. So a backend's style
    stays the same across reports unless another backend's preference collides with it."""
    fixed = {backend: color for backend, color in (fixed or {}).items() if color and backend in backends}
    order = sorted(set(backends), key=lambda b: (b not in fixed, b))
    used_colors: set[str] = set()
    used_markers: set[int] = set()
    pairs: set[tuple[str, int]] = set()
    styles: dict[str, BackendStyle] = {}
    for backend in order:
        preference = _preference(backend)
        if backend in fixed:
            color = fixed[backend]
        else:
            free = _first_free(preference % len(PALETTE), len(PALETTE), {PALETTE.index(c) for c in used_colors
                                                                          if c in PALETTE})
            color = PALETTE[preference % len(PALETTE) if free is None else free]
        marker = _first_free((preference // len(PALETTE)) % len(MARKERS), len(MARKERS), used_markers)
        if marker is None:
            marker = next(m for m in itertools.count() if (color, m) not in pairs)
        used_colors.add(color)
        used_markers.add(marker)
        pairs.add((color, marker))
        shape = marker_shape(marker)
        styles[backend] = BackendStyle(color, shape, HATCHES[marker % len(HATCHES)], _glyph(shape))
    return styles


def backend_colors(backends: list[str], fixed: dict[str, str] | None = None) -> dict[str, str]:
    """Each backend's colour from `backend_styles` (declared colours kept)."""
    return {backend: style.color for backend, style in backend_styles(backends, fixed).items()}


def _bar_handle(style: BackendStyle, label: str) -> Patch:
    """A legend entry for bars: the backend's colour and hatching."""
    return Patch(facecolor=style.color, hatch=style.hatch, edgecolor="white", linewidth=0, label=label)


def svg_of(fig: plt.Figure, figure_id: str) -> str:
    buffer = io.StringIO()
    with plt.rc_context({"svg.hashsalt": figure_id}):
        fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    text = re.sub(r"^<\?xml[^>]*>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    return text.replace("<svg ", f'<svg role="img" aria-label="{figure_id}" ', 1)


def length_label(value: float) -> str:
    """1024 -> '1k', 512 -> '512', 0 -> '0', 12.5 -> '12.5'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    if value >= 1024 and float(value) % 1024 == 0:
        return f"{int(value) // 1024}k"
    return f"{value:g}"


def short_case(row, page: bool = True) -> str:
    """A compact case label for axes: 'b8 q2k c1k p256', then the variant when the case has one ('b64 q1 c16k
    p16 w4096', so a featured cell and its plain twin differ); mixed cases keep their name. ``page``
    False leaves the page size out (a panel that is one page size)."""
    if row["workload"] == "mixed":
        return str(row["case"]) if page else re.sub(r"-p\d+(?=-|$)", "", str(row["case"]), count=1)
    variant = row.get("variant") if hasattr(row, "get") else None
    label = f"b{int(row['batch_size'])} q{length_label(row['q_len'])} c{length_label(row['context'])}"
    label += f" p{int(row['page_size'])}" if page else ""
    return label + (f" {variant}" if isinstance(variant, str) and variant else "")


def _ok(results: ResultSet, workload: str) -> pd.DataFrame:
    """Timed rows of one workload kind and of the main variant (variants get their own figure)."""
    rows = results.ok_rows
    return rows[(rows["workload"] == workload) & (rows["variant"] == results.main_variant)]


def _log2_axis(ax, values) -> None:
    values = sorted(v for v in set(values) if v and v > 0)
    if not values:
        return
    ax.set_xscale("log", base=2)
    ax.set_xticks(values)
    ax.set_xticklabels([length_label(v) for v in values])
    ax.minorticks_off()
    if len(values) == 1:
        ax.set_xlim(values[0] / 2, values[0] * 2)


def compact_tick(value: float, _position=None) -> str:
    if value <= 0:
        return ""
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _minor_tick(value: float, _position=None) -> str:
    """Label the 2s and 5s of each decade, leave the rest blank."""
    if value <= 0:
        return ""
    lead = round(value / 10 ** math.floor(math.log10(value)), 6)
    return compact_tick(value) if lead in (2.0, 5.0) else ""


def _compact_log_y(ax) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(compact_tick))
    ax.yaxis.set_minor_formatter(FuncFormatter(_minor_tick))


def _line_panels(rows: pd.DataFrame, *, x: str, y: str, style_by: str | None, styles: dict[str, BackendStyle],
                 xlabel: str, ylabel: str, error_bars: bool, ceiling: tuple[float, str] | None = None
                 ) -> plt.Figure:
    """A grid of panels (rows: batch size; columns: page size), one line per backend (its colour and
    marker) and per value of ``style_by`` (its dash), log-log axes."""
    pages = sorted(rows["page_size"].unique())
    batches = sorted(rows["batch_size"].unique())
    values = sorted(rows[style_by].unique()) if style_by else [None]
    fig, axes = plt.subplots(len(batches), len(pages), squeeze=False, sharex=True, sharey="row", layout="constrained",
                             figsize=(min(6.2 * len(pages), 12.5), 2.35 * len(batches) + 0.9))
    for i, batch in enumerate(batches):
        for j, page in enumerate(pages):
            ax = axes[i][j]
            cell = rows[(rows["batch_size"] == batch) & (rows["page_size"] == page)]
            for backend, style in styles.items():
                for k, value in enumerate(values):
                    line = cell[cell["backend"] == backend]
                    if style_by:
                        line = line[line[style_by] == value]
                    line = line.sort_values(x)
                    if line.empty:
                        continue
                    yerr = None
                    if error_bars:
                        yerr = np.vstack([(line[y] - line["q1_us"]).clip(lower=0), (line["q3_us"] - line[y]).clip(lower=0)])
                    ax.errorbar(line[x], line[y], yerr=yerr, color=style.color, linestyle=DASHES[k % len(DASHES)],
                                marker=style.marker,
                                markersize=3.5, linewidth=1.4, capsize=2 if error_bars else 0, elinewidth=0.9)
            if ceiling:
                ax.axhline(ceiling[0], color="#333", linestyle=(0, (4, 3)), linewidth=1)
                ax.annotate(ceiling[1], xy=(0.01, ceiling[0]), xycoords=("axes fraction", "data"), xytext=(0, 2),
                            textcoords="offset points", fontsize=7, color="#333", va="bottom")
            _log2_axis(ax, rows[x].unique())
            ax.set_yscale("log")
            _compact_log_y(ax)
            if ceiling:
                ax.set_ylim(top=max(ax.get_ylim()[1], ceiling[0] * 1.5))
            ax.set_title(f"page {int(page)} · batch {int(batch)}", fontsize=8.5, loc="left")
            if i == len(batches) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
    handles = [Line2D([], [], color=style.color, marker=style.marker, markersize=5, linewidth=2.2, label=b)
               for b, style in styles.items() if b in set(rows["backend"])]
    if style_by and len(values) > 1:
        handles += [Line2D([], [], color="#555", linestyle=DASHES[k % len(DASHES)], linewidth=1.4,
                           label=f"{style_by} {length_label(v)}") for k, v in enumerate(values)]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 9), frameon=False)
    return fig


def latency_figures(results: ResultSet, styles: dict[str, BackendStyle]) -> list[Figure]:
    figures = []
    decode = _ok(results, "decode")
    if len(decode):
        fig = _line_panels(decode, x="context", y="median_us", style_by=None, styles=styles, error_bars=True,
                           xlabel="context (cached tokens per sequence)", ylabel="median µs (q1–q3)")
        figures.append(Figure("plot-latency-decode", "Decode latency against context", "Median launch time with q1–q3 error bars; "
                              "lower is better.", svg_of(fig, "plot-latency-decode")))
    prefill = _ok(results, "prefill")
    if len(prefill):
        fig = _line_panels(prefill, x="q_len", y="median_us", style_by="context", styles=styles, error_bars=True,
                           xlabel="tokens per sequence (q_len)", ylabel="median µs (q1–q3)")
        figures.append(Figure("plot-latency-prefill", "Prefill latency against tokens per sequence", "Median launch time with q1–q3 error bars; "
                              "line style = cached context; lower is better.", svg_of(fig, "plot-latency-prefill")))
    return figures


def throughput_figures(results: ResultSet, styles: dict[str, BackendStyle]) -> list[Figure]:
    ceilings = results.ceilings() or {}
    figures = []
    prefill = _ok(results, "prefill").dropna(subset=["tflops"])
    if len(prefill):
        peak = ceilings.get("matmul_bf16_tflops")
        ceiling = (float(peak), f"bf16 matmul ceiling {float(peak):.0f} TFLOP/s") if peak else None
        fig = _line_panels(prefill, x="q_len", y="tflops", style_by="context", styles=styles, error_bars=False,
                           xlabel="tokens per sequence (q_len)", ylabel="TFLOP/s", ceiling=ceiling)
        caption = "Matrix FLOPs per second" + ("; dashed: this machine's measured bf16 matmul rate" if ceiling else
                                               " (no ceiling drawn: none was measured with these results)")
        figures.append(Figure("plot-tflops-prefill", "Prefill compute throughput (TFLOP/s)", caption + ". Higher is better.",
                              svg_of(fig, "plot-tflops-prefill")))
    decode = _ok(results, "decode").dropna(subset=["tbps"])
    if len(decode):
        peak = ceilings.get("copy_tbps")
        ceiling = (float(peak), f"device copy ceiling {float(peak):.2f} TB/s") if peak else None
        fig = _line_panels(decode, x="context", y="tbps", style_by=None, styles=styles, error_bars=False,
                           xlabel="context (cached tokens per sequence)", ylabel="TB/s", ceiling=ceiling)
        caption = "Bytes at least moved per second" + ("; dashed: this machine's measured copy bandwidth" if ceiling else
                                                       " (no ceiling drawn: none was measured with these results)")
        figures.append(Figure("plot-tbps-decode", "Decode memory throughput (TB/s)", caption + ". Higher is better.",
                              svg_of(fig, "plot-tbps-decode")))
    return figures


def _speedup_grid(own: pd.DataFrame, ref: pd.Series, batches: list, columns: list) -> tuple[np.ndarray, list[list[str]]]:
    """log2(reference time / backend time) on batch x (q_len, context), and each cell's label
    ('1.23×', or the verdict of a cell that was not timed; '' where the sweep has no such cell)."""
    grid = np.full((len(batches), len(columns)), np.nan)
    labels = [["" for _ in columns] for _ in batches]
    for row in own.to_dict("records"):
        i, k = batches.index(row["batch_size"]), columns.index((row["q_len"], row["context"]))
        if row["verdict"] == "ok" and row["case"] in ref.index and row["median_us"] > 0:
            grid[i, k] = math.log2(ref[row["case"]] / row["median_us"])
            labels[i][k] = f"{2 ** grid[i, k]:.2f}×"
        else:
            labels[i][k] = heat_label("no ref" if row["verdict"] == "ok" else row["verdict"])
    return grid, labels


HEAT_LABELS = {**SYMBOLS, "no ref": "n/r"}
"""Short labels of untimed heat-map cells (the capability matrix's symbols): a verdict's full word
overflows a cell; the figure's caption spells them out."""
CHAR_WIDTH_EM = 0.62
"""Average advance of a DejaVu Sans character in ems (digits and lower case), for fitting a label."""


def heat_label(verdict: str) -> str:
    """The text of an untimed heat-map cell: its symbol, or the verdict cut to four characters."""
    return HEAT_LABELS.get(verdict, verdict[:4])


def fit_fontsize(text: str, cell_width_pt: float, largest: float = 7.0, smallest: float = 4.0) -> float:
    """The largest font size (points, within [smallest, largest]) at which ``text`` fits a cell
    ``cell_width_pt`` wide with a little margin."""
    needed = max(len(text), 1) * CHAR_WIDTH_EM
    return max(smallest, min(largest, 0.9 * cell_width_pt / needed))


def _heat_caption_key(labels) -> str:
    """'— unsupported, skip skipped' for the symbols a heat map shows."""
    shown = {text for row in labels for text in row}
    return ", ".join(f"{symbol} {word}" for word, symbol in HEAT_LABELS.items() if symbol in shown and symbol != word)


def speedup_figures(results: ResultSet, reference: str | None) -> list[Figure]:
    """Per backend: time of ``reference`` / time of the backend over batch size x (q_len, context), one
    panel per page size (decode and prefill cases; > 1 means faster than the reference)."""
    if not reference:
        return []
    rows = results.rows[results.rows["workload"].isin(["decode", "prefill"])
                        & (results.rows["variant"] == results.main_variant)]
    ref = rows[(rows["backend"] == reference) & (rows["verdict"] == "ok")].set_index("case")["median_us"]
    if ref.empty:
        return []
    figures = []
    pages = sorted(rows["page_size"].unique())
    columns = sorted({(q, c) for q, c in zip(rows["q_len"], rows["context"])})
    batches = sorted(rows["batch_size"].unique())
    for backend in sorted(set(rows["backend"]) - {reference}):
        own = rows[rows["backend"] == backend]
        if own.empty or (own["verdict"] == "skipped").all():
            continue
        grids = {page: _speedup_grid(own[own["page_size"] == page], ref, batches, columns) for page in pages}
        finite = [np.abs(g[np.isfinite(g)]).max() for g, _ in grids.values() if np.isfinite(g).any()]
        span = max([1.0, *finite])
        norm = Normalize(-span, span)
        width = min(0.62 * len(columns) * len(pages) + 1.6, 12.5)
        cell_pt = (width - 1.6) / (len(columns) * len(pages)) * 72
        fig, axes = plt.subplots(1, len(pages), squeeze=False, layout="constrained",
                                 figsize=(width, 0.42 * len(batches) + 1.5))
        for ax, page in zip(axes[0], pages):
            grid, labels = grids[page]
            ax.imshow(np.ma.masked_invalid(grid), cmap=SPEEDUP_CMAP, norm=norm, aspect="auto")
            for i, k in itertools.product(range(len(batches)), range(len(columns))):
                if labels[i][k] and not np.isfinite(grid[i, k]):
                    ax.add_patch(Rectangle((k - 0.5, i - 0.5), 1, 1, color="#d0d4d9", linewidth=0))
                if labels[i][k]:
                    dark = np.isfinite(grid[i, k]) and abs(grid[i, k]) > 0.6 * span
                    ax.text(k, i, labels[i][k], ha="center", va="center", fontsize=fit_fontsize(labels[i][k], cell_pt),
                            color="white" if dark else "#222")
            ax.set_xticks(range(len(columns)))
            ax.set_xticklabels([f"q{length_label(q)}\nc{length_label(c)}" for q, c in columns], fontsize=7)
            ax.set_yticks(range(len(batches)))
            ax.set_yticklabels([f"B{int(b)}" for b in batches])
            ax.grid(False)
            ax.set_title(f"page {int(page)}", loc="left")
            ax.set_xlabel("tokens per sequence (q) / context (c)")
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=SPEEDUP_CMAP), ax=axes[0].tolist(), shrink=0.9, pad=0.01)
        ticks = [t for t in range(-6, 7) if abs(t) <= span]
        bar.set_ticks(ticks)
        bar.set_ticklabels([f"{2.0 ** t:g}×" for t in ticks])
        key = _heat_caption_key(row for _, labels in grids.values() for row in labels)
        figure_id = f"plot-speedup-{slug(backend)}"
        figures.append(Figure(figure_id, f"Speed-up of {backend} against {reference}",
                              f"{reference} time / {backend} time per cell: green = {backend} faster. "
                              f"Grey: not timed (verdict shown{': ' + key if key else ''}); "
                              "blank: no such case in the sweep.",
                              svg_of(fig, figure_id)))
    return figures


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def roofline_share(rows: pd.DataFrame) -> pd.DataFrame:
    """Per ok row: the binding ceiling (compute or memory) and the share of it reached, in %."""
    rows = rows.dropna(subset=["pct_matmul_ceiling", "pct_copy_ceiling"])
    compute_bound = rows["pct_matmul_ceiling"] >= rows["pct_copy_ceiling"]
    return rows.assign(bound=np.where(compute_bound, "compute", "memory"),
                       roofline_pct=np.where(compute_bound, rows["pct_matmul_ceiling"], rows["pct_copy_ceiling"]))


def _roofline_slots(rows: pd.DataFrame) -> list[tuple[str, str] | None]:
    """x slots of one panel: (kind, case) in workload order, a None gap between kinds."""
    ordered = rows.assign(_k=workload_rank(rows["workload"])).sort_values(
        ["_k", "batch_size", "q_len", "context", "case"])
    slots: list[tuple[str, str] | None] = []
    for kind, case in dict.fromkeys(zip(ordered["workload"], ordered["case"])):
        if slots and slots[-1] is not None and slots[-1][0] != kind:
            slots.append(None)
        slots.append((kind, case))
    return slots


def roofline_figure(results: ResultSet, styles: dict[str, BackendStyle]) -> Figure | None:
    """Grouped bars, one panel per page size: per plain case (grouped by workload kind), each backend's
    share of the binding ceiling (the larger of % matmul and % copy). Cells with model features show
    their shares in the model-features table instead."""
    ok = results.ok_rows
    shares = roofline_share(ok[~results.featured.loc[ok.index]])
    if shares.empty:
        return None
    pages = sorted(shares["page_size"].unique())
    backends = [b for b in styles if b in set(shares["backend"])]
    most = max(len(_roofline_slots(shares[shares["page_size"] == page])) for page in pages)
    width = min(max(6.0, 0.11 * most * max(2, len(backends)) + 1.5), 12.5)
    fig, axes = plt.subplots(len(pages), 1, squeeze=False, layout="constrained", figsize=(width, 2.9 * len(pages) + 0.5))
    bar = 0.8 / max(1, len(backends))
    for ax, page in zip(axes[:, 0], pages):
        rows = shares[shares["page_size"] == page]
        slots = _roofline_slots(rows)
        for b, backend in enumerate(backends):
            own = rows[rows["backend"] == backend].set_index("case")
            xs = [x for x, slot in enumerate(slots) if slot is not None and slot[1] in own.index]
            ax.bar([x - 0.4 + bar * (b + 0.5) for x in xs], [own.loc[slots[x][1], "roofline_pct"] for x in xs],
                   width=bar, color=styles[backend].color, hatch=styles[backend].hatch, edgecolor="white",
                   linewidth=0, label=backend)
        first = {row["case"]: row for row in rows.drop_duplicates("case").to_dict("records")}
        labels = []
        for slot in slots:
            if slot is None:
                labels.append("")
                continue
            row = first[slot[1]]
            name = short_case(row, page=False)
            labels.append(f"{name} · {'mem' if row['bound'] == 'memory' else 'FLOP'}")
        for x, slot in enumerate(slots):
            if slot is None:
                ax.axvline(x, color="#bbb", linewidth=0.8)
        top = max(120.0, float(rows["roofline_pct"].max()) * 1.15)
        for kind in dict.fromkeys(slot[0] for slot in slots if slot):
            xs = [x for x, slot in enumerate(slots) if slot and slot[0] == kind]
            ax.text(min(xs) - 0.4, top * 0.98, kind, fontsize=8, fontweight="bold", color="#444", va="top")
        ax.axhline(100, color="#333", linewidth=0.9, linestyle=(0, (4, 3)))
        ax.set_xticks(range(len(slots)))
        ax.set_xticklabels(labels, rotation=35, ha="right", rotation_mode="anchor", fontsize=7)
        ax.tick_params(axis="x", length=0)
        ax.set_xlim(-0.6, len(slots) - 0.4)
        ax.set_ylim(0, top)
        ax.set_ylabel("% of binding ceiling")
        ax.set_title(f"page {int(page)}", loc="left")
        ax.grid(axis="x", visible=False)
    handles = [_bar_handle(styles[b], b) for b in backends]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 7), frameon=False)
    return Figure("plot-roofline", "Share of the roofline",
                  "Per case, the larger of % of the matmul ceiling and % of the copy ceiling (the binding one: "
                  "'FLOP' = compute-bound, 'mem' = memory-bound). 100 % = the machine's measured ceiling.",
                  svg_of(fig, "plot-roofline"))


def comparison_figure(comparison) -> Figure | None:
    """Per backend, new/old time ratio per timed cell (log scale) with each cell's noise band shaded;
    cells outside their band are drawn large, red (slower) or green (faster), and the slower ones named."""
    cells = comparison.cells
    if not len(cells) or "ratio" not in cells:
        return None
    timed = cells.dropna(subset=["ratio"])
    if timed.empty:
        return None
    timed = timed.assign(_k=workload_rank(timed["workload"])).sort_values(
        ["_k", "page_size", "batch_size", "q_len", "context", "case"])
    backends = sorted(timed["backend"].unique())
    fig, axes = plt.subplots(len(backends), 1, squeeze=False, layout="constrained",
                             figsize=(11.0, 1.9 * len(backends) + 0.7))
    cases = list(dict.fromkeys(timed["case"]))
    for ax, backend in zip(axes[:, 0], backends):
        own = timed[timed["backend"] == backend]
        xs = np.array([cases.index(c) for c in own["case"]])
        band = own["band"].to_numpy(dtype=float)
        ax.bar(xs, (1 + band) - 1 / (1 + band), bottom=1 / (1 + band), width=0.8, color="#d9d9d9", linewidth=0,
               label="noise band")
        for status, color in STATUS_COLORS.items():
            mask = (own["status"] == status).to_numpy()
            ax.scatter(xs[mask], own["ratio"].to_numpy()[mask], s=28 if status != "same" else 10, color=color,
                       zorder=3, label=status, edgecolors="white" if status != "same" else "none", linewidths=0.5)
        for x, ratio, case, status in zip(xs, own["ratio"], own["case"], own["status"]):
            if status == "slower":
                ax.annotate(case, (x, ratio), xytext=(4, 3), textcoords="offset points", fontsize=6.5, color="#b00")
        ax.axhline(1, color="#333", linewidth=0.8)
        ax.set_yscale("log")
        low, high = float(min(own["ratio"].min(), (1 / (1 + band)).min())), float(max(own["ratio"].max(), (1 + band).max()))
        ax.set_ylim(low / 1.04, high * 1.04)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.2f}"))
        ax.tick_params(axis="y", which="minor", labelsize=6.5)
        ax.set_xticks([])
        ax.set_xlim(-1, len(cases))
        ax.set_ylabel("new / old time")
        ax.set_title(backend, loc="left")
        ax.grid(axis="x", visible=False)
    kinds = ", ".join(workload_kinds(timed["workload"]))
    axes[-1, 0].set_xlabel(f"cells ({kinds}; by page size, batch, tokens, context)")
    handles = [Patch(color="#d9d9d9", label="noise band")] + [
        Line2D([], [], marker="o", linestyle="", color=c, label=s) for s, c in STATUS_COLORS.items()]
    fig.legend(handles=handles, loc="outside upper center", ncol=4, frameon=False)
    return Figure("plot-comparison", "Time ratio per cell",
                  "Above 1: the new set is slower. Grey: the cell's noise band; red / green: outside it.",
                  svg_of(fig, "plot-comparison"))


def variant_figure(results: ResultSet, styles: dict[str, BackendStyle], reference: str | None) -> Figure | None:
    """The cells outside the main variant (other head configurations, dtypes, pools), each next to its
    twin of the main variant: per backend, the speed-up against ``reference`` (its time / the
    backend's), one group of bars per cell. Without a reference, each backend's time."""
    variants = results.variant_rows
    if variants.empty:
        return None
    rows = results.rows[results.rows["verdict"] == "ok"]
    main = results.main_variant
    cases = list(dict.fromkeys(variants["case"]))
    twins = {case: case[: -len(variant) - 1] if variant and case.endswith("-" + variant) else None
             for case, variant in zip(variants["case"], variants["variant"])}
    labels, groups = [], []
    for case in cases:
        twin = twins.get(case)
        for name in ([twin] if twin and main == "" and (rows["case"] == twin).any() else []) + [case]:
            if name not in labels:
                labels.append(name)
                groups.append(rows[rows["case"] == name].set_index("backend")["median_us"])
    backends = [b for b in styles if any(b in group.index for group in groups)]
    if not backends:
        return None
    height = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(layout="constrained", figsize=(9.5, 0.32 * len(labels) * max(2, len(backends)) / 2 + 1.4))
    for b, backend in enumerate(backends):
        ys, values = [], []
        for y, group in enumerate(groups):
            if backend not in group.index:
                continue
            if reference:
                if reference not in group.index:
                    continue
                values.append(group[reference] / group[backend])
            else:
                values.append(group[backend])
            ys.append(y - 0.4 + height * (b + 0.5))
        ax.barh(ys, values, height=height, color=styles[backend].color, hatch=styles[backend].hatch,
                edgecolor="white", linewidth=0, label=backend)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×" if reference else compact_tick(v)))
    if reference:
        ax.axvline(1, color="#333", linewidth=0.9)
        ax.set_xlabel(f"speed-up against {reference} ({reference} time / backend time)")
    else:
        ax.set_xlabel("median µs")
    ax.grid(axis="y", visible=False)
    fig.legend(handles=[_bar_handle(styles[b], b) for b in backends], loc="outside upper center",
               ncol=min(len(backends), 6), frameon=False)
    what = f"speed-up against {reference}: right of 1 is faster" if reference else "median time: shorter is faster"
    return Figure("plot-variants", "Other head configurations, dtypes and pools",
                  f"Cells outside the standard layer, each under its standard twin where the sweep has one; {what}.",
                  svg_of(fig, "plot-variants"))


FEATURE_PANEL_COLUMNS = 2


def feature_figure(results: ResultSet, styles: dict[str, BackendStyle]) -> Figure | None:
    """The cells with model features, each beside its plain twin: one panel per featured case, one line
    per backend with two bars, the plain twin's median time (pale, hatched) and the featured cell's (the
    backend's colour); a backend whose featured cell did not run shows its verdict there instead (the
    model-features table gives the reason)."""
    cells = feature_cells(results, name_fastest=False)
    if not cells:
        return None
    columns = min(FEATURE_PANEL_COLUMNS, len(cells))
    rows_of_panels = math.ceil(len(cells) / columns)
    tallest = max(len(cell.rows) for cell in cells)
    fig, axes = plt.subplots(rows_of_panels, columns, squeeze=False, layout="constrained",
                             figsize=(6.2 * columns, rows_of_panels * (0.3 * tallest + 1.0) + 0.6))
    for ax in axes.flat[len(cells):]:
        ax.set_visible(False)
    for ax, cell in zip(axes.flat, cells):
        lines = [row for row in cell.rows]
        lines.sort(key=lambda row: list(styles).index(row["backend"]) if row["backend"] in styles else len(styles))
        times = [t for row in lines for t in (row["median_us"], row["twin_median_us"]) if not _missing(t)]
        floor = min(times) / 3 if times else 1.0
        for y, row in enumerate(lines):
            style = styles.get(row["backend"], BackendStyle("#888", "o", "", "●"))
            if not _missing(row["twin_median_us"]):
                ax.barh(y - 0.2, row["twin_median_us"], height=0.38, color=style.color, alpha=0.35, hatch="////",
                        edgecolor="white", linewidth=0)
            elif row["twin_verdict"] and row["twin_verdict"] != "ok":
                ax.text(floor, y - 0.2, f" plain: {row['twin_verdict']}", va="center", fontsize=6.5, color="#777")
            if not _missing(row["median_us"]):
                ax.barh(y + 0.2, row["median_us"], height=0.38, color=style.color, hatch=style.hatch,
                        edgecolor="white", linewidth=0)
                if not _missing(row["ratio"]) and not results.measured_on_cpu:  # CPU_SMOKE_NOTE: no ratios
                    ax.text(row["median_us"], y + 0.2, f" {row['ratio']:.2f}×", va="center", fontsize=6.5, color="#333")
            else:
                ax.text(floor, y + 0.2, f" {SYMBOLS.get(row['verdict'], '')} {row['verdict']}", va="center",
                        fontsize=7, color="#a33", fontweight="bold")
        ax.set_yticks(range(len(lines)))
        ax.set_yticklabels([row["backend"] for row in lines], fontsize=7)
        ax.set_ylim(len(lines) - 0.4, -0.6)
        ax.set_xscale("log")
        if times:
            ax.set_xlim(floor, max(times) * 2.2)
        ax.xaxis.set_major_formatter(FuncFormatter(compact_tick))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_tick))
        ax.set_xlabel("median µs")
        ax.grid(axis="y", visible=False)
        twin = f"vs {cell.twin}" if any(row["twin_verdict"] for row in lines) else "no plain twin in these results"
        ax.set_title(f"{cell.case}\n{cell.features} · {twin}", loc="left", fontsize=7.5)
    handles = [Patch(facecolor="#888", alpha=0.35, hatch="////", edgecolor="white", label="plain twin"),
               Patch(facecolor="#888", label="with the feature(s)")]
    fig.legend(handles=handles, loc="outside upper center", ncol=2, frameon=False)
    return Figure("plot-model-features", "Model features beside their plain twins",
                  "Per featured cell and backend: the plain twin's median time (pale) and the cell's with the feature "
                  "(solid; the label is feature / plain). A verdict instead of a bar: the backend declined or failed "
                  "the cell (its reason is in the table below). Shorter is faster.",
                  svg_of(fig, "plot-model-features"))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def result_figures(results: ResultSet, styles: dict[str, BackendStyle], baseline: str | None
                   ) -> dict[str, list[Figure]]:
    """Every figure of one result set, grouped by section: latency, throughput, speed-up against
    ``baseline`` (the standard cells' maps, then the variants beside their twins), roofline, and the
    cells with model features beside their plain twins."""
    with plt.rc_context(STYLE):
        roofline = roofline_figure(results, styles)
        variants = variant_figure(results, styles, baseline)
        features = feature_figure(results, styles)
        return {"latency": latency_figures(results, styles), "throughput": throughput_figures(results, styles),
                "speedup": speedup_figures(results, baseline) + ([variants] if variants else []),
                "roofline": [roofline] if roofline else [], "features": [features] if features else []}


def comparison_figures(comparison) -> list[Figure]:
    with plt.rc_context(STYLE):
        figure = comparison_figure(comparison)
    return [figure] if figure else []
