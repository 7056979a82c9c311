"""Backend styles in the report figures: every backend a distinct (colour, marker) pair for any number of
backends, declared colours kept, styles deterministic and stable; heat-map labels that fit their cells."""

from __future__ import annotations

import re

import pytest

from reports.html import render_report
from reports.model import load_results
from reports.plots import (HEAT_LABELS, MARKERS, PALETTE, backend_colors, backend_styles, fit_fontsize, heat_label,
                           marker_shape)
from tests.report_fixtures import small_cases, synthetic_rows, synthetic_runs, write_results_folder

TWELVE = ["cudnn", "cudnn-trows", "fa4", "flash-attn2", "flashinfer", "flashinfer-batch-attention", "flashinfer-cudnn",
          "flashinfer-fa2", "flashinfer-fa3", "flex-paged", "jax-pallas-decode", "sdpa-gather", "triton"]
SIXTEEN = TWELVE[:12] + ["backend-a", "backend-b", "backend-c", "backend-d"]


@pytest.mark.parametrize("count", [16, len(PALETTE) * len(MARKERS) + 5])
def test_every_backend_gets_its_own_colour_and_marker(count):
    names = (SIXTEEN + [f"extra-{i}" for i in range(count)])[:count]
    styles = backend_styles(names, {"cudnn": "#76b900"})
    assert sorted(styles) == sorted(names)
    pairs = [(style.color, style.marker) for style in styles.values()]
    assert len(set(pairs)) == count


def test_sixteen_backends_use_every_colour_and_distinct_markers_first():
    styles = backend_styles(SIXTEEN)
    assert {style.color for style in styles.values()} == set(PALETTE)  # no colour left unused while two share one
    assert len({style.marker for style in styles.values()}) == len(MARKERS)


def test_declared_colours_are_kept():
    styles = backend_styles(SIXTEEN, {"cudnn": "#76b900", "triton": "#123456", "not-present": "#000000"})
    assert styles["cudnn"].color == "#76b900" and styles["cudnn"].color not in PALETTE
    assert "not-present" not in styles
    assert backend_colors(SIXTEEN, {"cudnn": "#76b900"})["cudnn"] == "#76b900"
    twins = backend_styles(["a", "b"], {"a": "#111111", "b": "#111111"})  # two declare one colour: markers differ
    assert twins["a"].marker != twins["b"].marker


def test_styles_are_deterministic_and_stable():
    """The same names give the same styles in any order; a backend's style depends only on the backends
    placed before it (declared ones, then by name), so adding later ones never moves it."""
    assert backend_styles(SIXTEEN) == backend_styles(list(reversed(SIXTEEN)))
    full = backend_styles(TWELVE)
    for end in range(1, len(TWELVE) + 1):
        assert backend_styles(TWELVE[:end])[TWELVE[end - 1]] == full[TWELVE[end - 1]]
    alone = {name: backend_styles([name])[name] for name in TWELVE}
    assert len({(s.color, s.marker) for s in alone.values()}) > 1  # the preference comes from the name


def test_markers_never_run_out():
    shapes = [marker_shape(i) for i in range(200)]
    assert len(set(shapes)) == 200 and shapes[:len(MARKERS)] == list(MARKERS)


def test_heat_map_labels_are_short_and_fit():
    for verdict in ("unsupported", "skipped", "error", "wrong", "oom", "timeout", "no ref", "some-future-verdict"):
        assert 1 <= len(heat_label(verdict)) <= 4, verdict
    assert heat_label("unsupported") == HEAT_LABELS["unsupported"]
    for width in (20.0, 30.0, 45.0):
        for text in ("1.23×", "12.34×", "skip", "—"):
            size = fit_fontsize(text, width)
            assert 4.0 <= size <= 7.0
            assert size == 4.0 or len(text) * 0.62 * size <= 0.9 * width  # fits unless at the smallest size
    assert fit_fontsize("12.34×", 20.0) < fit_fontsize("12.34×", 45.0) == 7.0


def test_report_with_sixteen_backends_shows_a_distinct_mark_per_card(tmp_path):
    rows = []
    for index, name in enumerate(SIXTEEN):
        source = ("sdpa-gather", "triton", "flex-paged", "cudnn")[index % 4]
        for row in synthetic_rows(case_list=small_cases()[:3]):
            if row["backend"] == source:
                rows.append(dict(row, backend=name, cell_id=f"{row['cell_id']}-{index}"))
    folder = write_results_folder(tmp_path / "many", rows, synthetic_runs(), partial_tail=False)
    page = render_report(load_results(folder), tmp_path / "report.html").read_text()
    marks = {}
    for name in SIXTEEN:
        card = re.search(rf'id="backend-{re.escape(name)}">\s*<h3><span class="mark"[^>]*'
                         r'style="color: ([^"]+)">([^<]+)<', page)
        assert card, name
        marks[name] = card.groups()
    assert len(set(marks.values())) == len(SIXTEEN)
