"""The version comparison: planted slow-downs and capability losses are flagged, measurement-sized
noise is not, cells on one side only are listed, and the environments' differences are named."""

from __future__ import annotations

import json

import pytest

from reports.compare import (NOISE_FLOOR, CellPair, Comparison, compare, compare_folders, format_comparison_text,
                             noise_band)
from reports.model import ResultSet
from tests.report_fixtures import (SKIPPED_BACKEND, synthetic_capability, synthetic_rows, synthetic_runs,
                                   write_results_folder)

SLOW_CELL = ("cudnn", "decode-b64-q1-c4096-p256")
LOST_CELL = ("triton", "prefill-b8-q2048-c0-p256")


def result_set(rows, *, frontend="1.32.0", env_id="env-old", run_id="run-1", capability=None, name="") -> ResultSet:
    return ResultSet.from_records(rows, synthetic_runs(env_id=env_id, run_id=run_id, frontend=frontend),
                                  capability if capability is not None else synthetic_capability(), name=name)


@pytest.fixture(scope="module")
def old() -> ResultSet:
    return result_set(synthetic_rows(seed=0), name="old")


def new_set(seed: int = 1, **kwargs) -> ResultSet:
    capability = kwargs.pop("capability", None)
    rows = synthetic_rows(seed=seed, jitter=0.02, env_id="env-new", run_id="run-2",
                          versions={"cudnn_frontend": "1.22.1"}, **kwargs)
    return result_set(rows, frontend="1.22.1", env_id="env-new", run_id="run-2", capability=capability, name="new")


def status_of(comparison: Comparison, backend: str, case: str) -> str:
    cells = comparison.cells
    match = cells[(cells["backend"] == backend) & (cells["case"] == case)]
    assert len(match) == 1, (backend, case)
    return match["status"].iloc[0]


def test_noise_band_rule():
    assert noise_band(1.0, 1.0) == NOISE_FLOOR  # quiet cells: the floor
    assert noise_band(None, float("nan")) == NOISE_FLOOR  # missing spread counts as none
    assert noise_band(6.0, 8.0) == pytest.approx(1.5 * 0.10)  # spreads add in quadrature: hypot(6, 8) = 10 %


def test_planted_slowdown_is_flagged(old):
    comparison = compare(old, new_set(factors={SLOW_CELL: 1.2}))
    assert status_of(comparison, *SLOW_CELL) == "slower"
    slower = comparison.cells[comparison.cells["status"] == "slower"]
    assert list(zip(slower["backend"], slower["case"])) == [SLOW_CELL]
    [regression] = comparison.regressions
    assert regression.check == "slower" and SLOW_CELL[1] in regression.label
    assert "slower" in regression.message and "noise band" in regression.message
    text = format_comparison_text(comparison)
    assert "SLOWER" in text and SLOW_CELL[1] in text


def test_planted_speedup_is_reported_not_a_regression(old):
    comparison = compare(old, new_set(factors={SLOW_CELL: 0.75}))
    assert status_of(comparison, *SLOW_CELL) == "faster"
    assert not comparison.regressions
    assert [f.check for f in comparison.improvements] == ["faster"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_percent_noise_is_not_flagged(old, seed):
    """±2 % on every median with launch-time IQRs of 1-3 % (what a quiet H100/H200 shows) stays inside the band."""
    comparison = compare(old, new_set(seed=seed))
    assert not comparison.regressions and not comparison.improvements
    assert set(comparison.cells["status"]) <= {"same", "unchanged"}
    timed = comparison.cells.dropna(subset=["ratio"])
    assert len(timed) > 100 and timed["ratio"].sub(1).abs().max() > 0.01  # the noise really is there
    assert (timed["band"] >= NOISE_FLOOR).all()


@pytest.mark.parametrize("verdict", ["error", "unsupported"])
def test_planted_capability_loss_is_flagged(old, verdict):
    reason = "run: RuntimeError: CUDNN_STATUS_EXECUTION_FAILED" if verdict == "error" else "layout declined in 1.22"
    comparison = compare(old, new_set(overrides={LOST_CELL: (verdict, reason)},
                                      capability=synthetic_capability(lost=("cudnn", "page_size", "16"))))
    assert status_of(comparison, *LOST_CELL) == "lost"
    lost = [f for f in comparison.regressions if f.check == "lost"]
    assert {f.kind for f in lost} == {"cell", "capability"}
    cell_loss = next(f for f in lost if f.kind == "cell")
    assert f"ok -> {verdict}" in cell_loss.message and reason in cell_loss.message
    capability = comparison.capability.set_index(["backend", "feature", "value"])
    assert capability.loc[("cudnn", "page_size", "16"), "status"] == "lost"
    text = format_comparison_text(comparison)
    assert "LOST" in text and "page_size=16" in text and LOST_CELL[1] in text


def test_capability_gain_and_changed_reason(old):
    new = new_set(overrides={LOST_CELL: ("error", "boom")})
    backwards = compare(new, old)  # error -> ok
    assert status_of(backwards, *LOST_CELL) == "gained"
    assert not [f for f in backwards.regressions if f.check == "lost"]
    changed = compare(new, new_set(seed=2, overrides={LOST_CELL: ("error", "a different message")}))
    assert status_of(changed, *LOST_CELL) == "changed"
    assert "a different message" in changed.cells.set_index("case").loc[LOST_CELL[1]].query("backend == 'triton'")[
        "message"].iloc[0]


def test_cells_on_one_side_are_listed(old):
    rows = [row for row in synthetic_rows(seed=1, jitter=0.02) if not row["case"].startswith("mixed-")]
    extra = synthetic_rows(seed=1)[:1]
    extra[0] = {**extra[0], "backend": "newcomer", "cell_id": "newcomer-cell-1"}
    comparison = compare(old, result_set(rows + extra, name="new"))
    only_old = comparison.cells[comparison.cells["status"] == "only-old"]
    dropped = {row["cell_id"] for row in old.rows.to_dict("records") if row["case"].startswith("mixed-")}
    assert set(only_old["cell_id"]) == dropped
    assert list(comparison.cells.loc[comparison.cells["status"] == "only-new", "backend"]) == ["newcomer"]
    assert not comparison.regressions  # listed as notes, not regressions
    text = format_comparison_text(comparison)
    assert "ONLY-OLD" in text and "ONLY-NEW" in text and "newcomer" in text


def test_provenance_differences_name_the_changed_package(old):
    comparison = compare(old, new_set())
    diff = comparison.provenance.set_index("field")
    assert diff.loc["packages.nvidia-cudnn-frontend", "old"] == "1.32.0"
    assert diff.loc["packages.nvidia-cudnn-frontend", "new"] == "1.22.1"
    assert diff.loc["backend_versions.cudnn.cudnn_frontend", "new"] == "1.22.1"
    assert "packages.torch" not in diff.index and "date" not in diff.index and "run_id" not in diff.index
    assert "packages.nvidia-cudnn-frontend" in format_comparison_text(comparison)


def test_checks_are_pluggable_objects(old):
    class SlowerThanTenPercent:
        name, severity = "slower-10", "regression"

        def check(self, pair: CellPair) -> str | None:
            return "more than 10 % slower" if pair.ratio is not None and pair.ratio > 1.10 else None

    comparison = compare(old, new_set(factors={SLOW_CELL: 1.15}), checks=[SlowerThanTenPercent()])
    assert [(f.check, f.label) for f in comparison.findings] == [("slower-10", " ".join(SLOW_CELL))]


def test_compare_folders_and_json_summary(tmp_path):
    old_dir = write_results_folder(tmp_path / "old", synthetic_rows(seed=0), synthetic_runs(label="fe-1.32"),
                                   synthetic_capability())
    new_rows = synthetic_rows(seed=1, jitter=0.02, factors={SLOW_CELL: 1.2}, env_id="env-new", run_id="run-2")
    new_dir = write_results_folder(tmp_path / "new", new_rows, synthetic_runs(env_id="env-new", run_id="run-2",
                                                                              frontend="1.22.1", label="fe-1.22"),
                                   synthetic_capability())
    comparison = compare_folders(old_dir, new_dir)
    assert comparison.old.label == "fe-1.32" and comparison.new.label == "fe-1.22"
    summary = json.loads(json.dumps(comparison.summary()))  # JSON-able as is
    assert summary["status_counts"]["slower"] == 1
    assert [r["label"] for r in summary["regressions"]] == [" ".join(SLOW_CELL)]
    assert summary["noise_band"]["floor"] == NOISE_FLOOR
    assert {"field": "packages.nvidia-cudnn-frontend", "old": "1.32.0", "new": "1.22.1"} in summary["provenance_diff"]
    skipped = comparison.cells[comparison.cells["backend"] == SKIPPED_BACKEND]
    assert set(skipped["status"]) == {"unchanged"}
