#!/usr/bin/env bash
# Run HERE (no GPU needed; nvcc 13 and a C++ compiler), from the project root, before
# scripts/stage-peers.sh:
#   bash scripts/build-peers-aot.sh [--dtypes bf16,fp16] [--head-dims 64,128] [--modules decode,fa2,fa3,holistic]
#                                   [--variants plain,window,softcap,fp8,sinks,window+softcap,window+sinks]
#   bash scripts/build-peers-aot.sh --list [same options]   # the module names only: no nvcc, nothing built
# Compiles FlashInfer's attention modules for sm_90a into .peers/aot/<module>/<module>.so so that the GPU
# machine loads them instead of spending device time on nvcc (FlashInfer's JIT). stage-peers.sh packs
# .peers/aot with the wheels; install-peers.sh copies it into FlashInfer's data/aot folder there.
# --variants (default plain: no window, no soft-cap, 16-bit KV, no sinks) adds the modules of the model
# features the flashinfer rows run (scripts/peers_aot.py, docs/peers.md): window, softcap, fp8 (e4m3 KV),
# sinks (the AttentionSink variant, fa2/fa3), and joined ones (window+softcap: Gemma 2's sliding layers;
# window+sinks: gpt-oss's). Each is one more module per kind, dtype and head dim (pairs no row runs are
# skipped, with the reason); a module already in .peers/aot is kept.
# Seen on a 2-core machine (bf16, D 128, plain): decode 200 s, fa2 1143 s, fa3 3575 s (cores shared),
# holistic 107 s. A variant module is the same size class as its kind's plain one.
set -euo pipefail
cd "$(dirname "$0")/.."

FI_VERSION=0.7.4
TVM_FFI_VERSION=0.1.15.post2
PY=${PYTHON:-python3}
HOST=${PEERS_HOST:-.peers/host}        # flashinfer for THIS machine's Python (only to run its build)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
LIST=0
for arg in "$@"; do [ "$arg" = "--list" ] && LIST=1; done   # --list: names only, no toolkit needed
[ "$LIST" = 1 ] || [ -x "$CUDA_HOME/bin/nvcc" ] || { echo "no nvcc in $CUDA_HOME/bin (set CUDA_HOME)" >&2; exit 1; }

if [ ! -d "$HOST/flashinfer" ]; then
  "$PY" -m pip install -q --no-deps --target "$HOST" "flashinfer-python==$FI_VERSION" \
    "apache-tvm-ffi==$TVM_FFI_VERSION" einops tabulate nvidia-ml-py
fi
if [ "$LIST" = 1 ]; then
  PYTHONPATH="$HOST${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" scripts/peers_aot.py "$@"
fi

# FlashInfer links its modules with -lcuda from $CUDA_HOME/lib64/stubs; a toolkit without the driver
# stub gets an empty one (soname libcuda.so.1: the driver's library is what loads on the GPU machine).
LDFLAGS_EXTRA=""
if [ ! -e "$CUDA_HOME/lib64/stubs/libcuda.so" ] && ! ldconfig -p 2>/dev/null | grep -q "libcuda.so "; then
  mkdir -p .peers/stubs
  if [ ! -f .peers/stubs/libcuda.so ]; then
    echo "" | gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -x c -o .peers/stubs/libcuda.so -
  fi
  LDFLAGS_EXTRA="-L$PWD/.peers/stubs"
fi

# FlashInfer's fa3 (SM90) sources include CUTLASS utilities that include curand_kernel.h; a toolkit without
# cuRAND's headers gets them from the nvidia-curand wheel of CUDA 13.0 (headers only are used).
CUDAFLAGS_EXTRA=""
if [ ! -f "$CUDA_HOME/include/curand_kernel.h" ]; then
  if [ ! -f .peers/curand/nvidia/cu13/include/curand_kernel.h ]; then
    mkdir -p .peers/curand
    "$PY" -m pip download -q --no-deps -d .peers/curand "nvidia-curand<10.4.1"
    (cd .peers/curand && "$PY" -m zipfile -e nvidia_curand-*.whl .)
  fi
  CUDAFLAGS_EXTRA="-I$PWD/.peers/curand/nvidia/cu13/include"
fi

export FLASHINFER_CUDA_ARCH_LIST=${FLASHINFER_CUDA_ARCH_LIST:-9.0a}
export FLASHINFER_EXTRA_CUDAFLAGS="$CUDAFLAGS_EXTRA"
export FLASHINFER_WORKSPACE_BASE=${FLASHINFER_WORKSPACE_BASE:-$PWD/.peers/fi-workspace}
export FLASHINFER_EXTRA_LDFLAGS="$LDFLAGS_EXTRA"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
PYTHONPATH="$HOST${PYTHONPATH:+:$PYTHONPATH}" "$PY" scripts/peers_aot.py --out .peers/aot "$@"
du -sh .peers/aot
