"""Which commit a run names: the checkout's own, never a stale $PAGED_BENCH_COMMIT (a GPU job once
recorded the staged kit's commit for code cloned from a later one)."""

import subprocess

from harness.measure import provenance


def test_a_git_checkout_names_its_own_commit_even_with_the_variable_set(monkeypatch):
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123456789ab")
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          cwd=provenance.Path(provenance.__file__).parent)
    if head.returncode != 0:
        import pytest
        pytest.skip("not a git checkout")
    assert provenance.project_commit().split("-dirty-")[0] == head.stdout.strip()


def test_without_git_the_variable_names_the_commit(monkeypatch):
    def no_git(*args, **kwargs):
        raise subprocess.CalledProcessError(128, args[0])
    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123456789ab")
    assert provenance.project_commit() == "0123456789ab"
    monkeypatch.delenv(provenance.COMMIT_ENV)
    assert provenance.project_commit() == "unknown"


def test_uncommitted_changes_are_named_by_their_diff(monkeypatch):
    """Two trees on one commit with different uncommitted changes name different things (a GPU job once ran three
    tables from copies of one checkout, and all three runs said "<commit>-dirty"); the same diff, the same name."""
    diffs = iter([b"diff --git a/configs.py\n+k_ahead=True\n", b"diff --git a/configs.py\n+k_ahead=False\n",
                  b"diff --git a/configs.py\n+k_ahead=True\n"])

    def git(args, **kwargs):
        out = {"rev-parse": "0123456789ab\n", "status": " M kernels/configs.py\n"}.get(args[1])
        return subprocess.CompletedProcess(args, 0, stdout=next(diffs) if out is None else out, stderr="")
    monkeypatch.setattr(provenance.subprocess, "run", git)
    first, second, third = (provenance.project_commit() for _ in range(3))
    assert first.startswith("0123456789ab-dirty-") and len(first) == len("0123456789ab-dirty-") + 8
    assert first != second and first == third


def test_a_clean_checkout_names_its_commit_alone(monkeypatch):
    def git(args, **kwargs):
        assert args[1] != "diff", "a clean checkout has no diff to hash"
        out = {"rev-parse": "0123456789ab\n", "status": ""}[args[1]]
        return subprocess.CompletedProcess(args, 0, stdout=out, stderr="")
    monkeypatch.setattr(provenance.subprocess, "run", git)
    assert provenance.project_commit() == "0123456789ab"
