#!/usr/bin/env bash
# asv on another cuDNN backend release, its results kept apart under their own asv machine name:
#
#     scripts/asv-release.sh RELEASE MACHINE [asv run options...]
#     scripts/asv-release.sh 9.28.1.4 h200-cudnn-9.28.1.4 --bench Decode
#     scripts/asv-release.sh /opt/cudnn-9.24/lib h200-cudnn-9.24
#
# RELEASE is a nvidia-cudnn-cu13 version (fetched once and cached by harness.releases.cudnn_release; on a
# machine without network unpack a packed release first) or a folder of cuDNN libraries. asv and
# every benchmark process it starts run with LD_LIBRARY_PATH / LD_PRELOAD of that release
# (harness.releases.environments); each row records the cuDNN it really loaded. One asv machine name per
# release: asv keys results on (commit, machine, environment), so `asv publish` then shows the
# releases side by side and `asv compare --machine A ... ` / per-machine graphs keep them apart.
#
# Environment: PAGED_BENCH_SWEEP (default short), ASV_COMMIT (default: git rev-parse HEAD; set it on
# a copy of the project without .git), PAGED_BENCH_ENV_LABEL (default: MACHINE).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
release=$1; machine=$2; shift 2
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
commit=${ASV_COMMIT:-$(git rev-parse HEAD)}
export PAGED_BENCH_SWEEP=${PAGED_BENCH_SWEEP:-short}
export ASV_PYTHONPATH=${ASV_PYTHONPATH:-${PYTHONPATH:-}}
label=${PAGED_BENCH_ENV_LABEL:-$machine}
"$python" -m harness.releases.cudnn_release path "$release" >/dev/null   # fetch (or check) before asv starts
asv machine --yes --machine "$machine" >/dev/null
exec "$python" -m harness.releases.environments "$label,cudnn=$release" -- \
  asv run --python=same --machine "$machine" --set-commit-hash "$commit" "$@"
