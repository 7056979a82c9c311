"""scripts/triton_tune.py, the Triton kernel's tuning script, in its CPU smoke mode: every configuration it
would time on a GPU is built, launched under the interpreter and checked against the reference, the
model features reach the batch, and a mixed batch that starts with decodes gets its decodes-apart row."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.triton_setup import needs_interpreter, requires_triton

REPO = Path(__file__).resolve().parents[1]

pytestmark = requires_triton


@needs_interpreter
def test_smoke_run_checks_every_configuration_with_features(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "triton_tune.py"), "--smoke", "--pages", "16",
               "--window", "8", "--sinks", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "tune.jsonl").read_text().splitlines()][1:]
    triton_rows = [row for row in rows if row.get("backend") == "triton"]
    assert triton_rows and all(row.get("ok") for row in triton_rows), \
        [row.get("error") or row.get("reason") for row in triton_rows if not row.get("ok")]
    assert {row["case"] for row in triton_rows} == {"2q1c40", "1q1c30_2q20c10"}
    assert all(row["features"] == {"sliding_window": 8, "sinks": True} for row in triton_rows)
    # the mixed case's two forced rows: its decode in the long launch, then apart
    forced = [row for row in triton_rows if row["label"].startswith("table, decodes")]
    assert [(row["case"], row["label"], row.get("decodes_apart")) for row in forced] == [
        ("1q1c30_2q20c10", "table, decodes in the long launch", None),
        ("1q1c30_2q20c10", "table, decodes apart", 1)]
    assert "(decodes) + " in forced[1]["config"]
    # every candidate of each case's pool was tried (none left out), the table's choice first and last
    tune = _load_tune_script()
    for case in ("2q1c40", "1q1c30_2q20c10"):
        spec = tune.BatchSpec.from_grammar(case, page_size=16, num_q_heads=4, num_kv_heads=2, head_dim=32,
                                           dtype="fp16", sliding_window=8, sinks=True)
        tried = [row["label"] for row in triton_rows if row["case"] == case]
        expected = [tune.candidate_label(config, apart) for config, _, apart in tune.candidates_for(spec, "cpu")]
        assert tried == expected and tried[0] == tried[-1] == "table", (tried, expected)


@needs_interpreter
def test_a_bad_feature_value_is_one_usage_line(tmp_path):
    """The script takes paged-bench's feature options and checks them the same way, before any batch."""
    command = [sys.executable, str(REPO / "scripts" / "triton_tune.py"), "--smoke", "--window", "0",
               "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 2 and "--window '0'" in result.stderr, result.stderr
    assert not (tmp_path / "tune.jsonl").exists()


def _load_tune_script():
    spec = importlib.util.spec_from_file_location("triton_tune", REPO / "scripts" / "triton_tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gluon_values_parse_or_name_the_mistake():
    """``--gluon`` takes N,STAGES and the options half, persistent, one schedule (paired, pingpong, overlap),
    onerange (with a paired schedule), m64 (not with pingpong), kahead, oq, qahead (with persistent) and tmaK; anything
    else is a usage error that names the value, raised before any GPU work."""
    tune = _load_tune_script()
    assert tune.gluon_config("128,2") == tune.HopperPrefillConfig(128, 2)
    assert tune.gluon_config("64,3,half") == tune.HopperPrefillConfig(64, 3, half_step=True)
    assert tune.gluon_config("64,2,persistent") == tune.HopperPrefillConfig(64, 2, persistent=True)
    assert tune.gluon_config("128,2,persistent,half") == tune.HopperPrefillConfig(128, 2, True, True)
    assert tune.gluon_config("128,2,tma64", pages=[256]) == tune.HopperPrefillConfig(128, 2, tma_keys=64)
    assert tune.gluon_config("128,2,pingpong") == tune.HopperPrefillConfig(128, 2, schedule="pingpong")
    assert tune.gluon_config("64,2,persistent,paired") == tune.HopperPrefillConfig(64, 2, persistent=True,
                                                                                    schedule="paired")
    assert tune.gluon_config("128,2,overlap").schedule == "overlap"
    assert tune.gluon_config("128,2,paired,onerange") == tune.HopperPrefillConfig(128, 2, schedule="paired",
                                                                                   one_range=True)
    assert tune.gluon_config("64,2,overlap,m64") == tune.HopperPrefillConfig(64, 2, schedule="overlap", block_m=64)
    assert tune.gluon_config("128,2,kahead,overlap") == tune.HopperPrefillConfig(128, 2, schedule="overlap",
                                                                                  k_ahead=True)
    assert tune.gluon_config("128,2,overlap,kahead").label().endswith("-overlap-kahead")
    assert tune.gluon_config("128,3,oq,overlap") == tune.HopperPrefillConfig(128, 3, schedule="overlap", o_in_q=True)
    assert tune.gluon_config("128,3,overlap,kahead,oq").label() == "gluon-ws M128-N128-s3-overlap-kahead-oq"
    assert tune.gluon_config("128,2,qahead,persistent") == tune.HopperPrefillConfig(128, 2, persistent=True,
                                                                                    q_ahead=True)
    assert tune.gluon_config("128,3,persistent,overlap,oq,qahead").label() == (
        "gluon-ws M128-N128-s3-persistent-overlap-oq-qahead")
    # 64-row tiles stop at D=128 (ptxas cannot fit a 64 x 256 accumulator's products in their registers)
    assert tune.gluon_config("64,2,m64", head_dims=[64, 128]).block_m == 64
    with pytest.raises(tune.UsageError, match=r"--gluon '64,2,m64': 64-row tiles run head dims up to 128, not 256"):
        tune.gluon_config("64,2,m64", head_dims=[128, 256])
    for bad in ("128,2,paired,pingpong", "128,2,overlap,paired", "128,2,half,pingpong", "128,2,ping", "128",
                "128,2,1", "128,0", "a,2", "-64,2", "128,2,full", "half", "128,half", "128,2,half,half",
                "128,2,persistent,x", "128,2,tma", "128,2,tma0", "128,2,tma16,tma32", "128,2,onerange",
                "128,2,half,paired,onerange", "128,2,paired,onerange,onerange", "64,2,pingpong,m64",
                "64,2,m64,m64", "64,2,m32", "128,2,kahead,kahead", "128,2,ahead", "128,3,oq,oq", "128,3,o",
                "128,2,qahead", "128,2,persistent,qahead,qahead"):
        try:
            tune.gluon_config(bad)
        except tune.UsageError as error:
            assert repr(bad) in str(error)
        else:
            raise AssertionError(f"--gluon {bad!r} was accepted")
    # a load size must suit the step and every page size asked for (the kernel's own check, before any GPU work)
    for bad, pages in (("128,2,tma64", [16, 256]), ("64,2,tma128", [256]), ("128,2,tma24", [256])):
        with pytest.raises(tune.UsageError, match=rf"--gluon '{bad}': tma_keys=\d+ must be a multiple of 16"):
            tune.gluon_config(bad, pages)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    """On a machine without CUDA a timing run stops with one usage line, not a traceback from torch."""
    command = [sys.executable, str(REPO / "scripts" / "triton_tune.py"), "--cases", "4q2kc0", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "CUDA GPU" in result.stderr and "Traceback" not in result.stderr, result.stderr
