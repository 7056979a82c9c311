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
    assert provenance.project_commit().removesuffix("-dirty") == head.stdout.strip()


def test_without_git_the_variable_names_the_commit(monkeypatch):
    def no_git(*args, **kwargs):
        raise subprocess.CalledProcessError(128, args[0])
    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123456789ab")
    assert provenance.project_commit() == "0123456789ab"
    monkeypatch.delenv(provenance.COMMIT_ENV)
    assert provenance.project_commit() == "unknown"
