#!/usr/bin/env bash
# A newcomer's first hour, as CI: a fresh virtual environment built from pyproject.toml alone (CPU
# torch first, as the README tells a CPU user), then the README's main command and `paged-bench env`,
# run from an empty folder, with their outputs checked. Nothing installed by hand elsewhere is used.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
$PY -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The README: "On a machine without a GPU, install PyTorch's CPU build first" (here it comes from local disk).
"$VPY" -m pip install -q "torch==2.13.0"
# The README's main command, from an empty folder (results land in ./bench-out).
"$VPY" -m pip install -q -e "$ROOT[gpu]"
mkdir -p "$WORK/newcomer"
cd "$WORK/newcomer"
set +e
"$WORK/venv/bin/paged-bench" > run.out 2> run.err
status=$?
"$WORK/venv/bin/paged-bench" env > env.out 2> env.err
env_status=$?
set -e
"$VPY" - "$status" "$env_status" <<'CHECK'
import json, sys
from pathlib import Path

status, env_status = int(sys.argv[1]), int(sys.argv[2])
err = Path("run.err").read_text()
assert status == 0, f"paged-bench exited {status}:\n{err[-3000:]}"
assert "Traceback" not in err and "\r" not in err, err[-3000:]
rows = [json.loads(line) for line in Path("bench-out/results.jsonl").read_text().splitlines()]
from adapters.base import discover
from harness.cases.sweep import SWEEPS
in_sweep = [name for name, adapter in discover().items() if adapter.in_sweep]
assert len(rows) == len(in_sweep) * len(SWEEPS["cpu-tiny"]), (len(rows), in_sweep)
ok = {row["backend"] for row in rows if row["verdict"] == "ok"}
assert {"sdpa-gather", "triton"} <= ok, ok
bad = [(r["backend"], r["case"], r["verdict"], r["reason"]) for r in rows if r["verdict"] not in ("ok", "skipped", "unsupported")]
assert not bad, bad
assert Path("bench-out/report.html").stat().st_size > 10_000
assert env_status == 0, Path("env.err").read_text()[-3000:]
record = json.loads(Path("env.out").read_text())
assert record["env_id"] and "Backends on cpu:" in Path("env.err").read_text()
print(f"first run: {len(rows)} cells, ok on {sorted(ok)}; paged-bench env: env_id {record['env_id']}")
CHECK
