"""Session 16's job: one launch each of cuDNN's and the Triton kernel's prefill of the default sweep's
``prefill-b8-q2048-c0-p*`` cell (32/8/128, bf16, causal) at pages 256 and 16, inside an NVTX range "profile"
so that ``ncu --nvtx --nvtx-include profile/`` sees those launches and nothing of the setup. Run from the tree's
root: ``ncu ... python3 ncu_cell.py``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
import torch  # noqa: E402

from adapters.base import get_adapter  # noqa: E402
from adapters.batch import BatchSpec, make_batch  # noqa: E402

for page in (256, 16):
    spec = BatchSpec.from_grammar("8q2kc0", page_size=page, num_q_heads=32, num_kv_heads=8, head_dim=128,
                                  dtype="bf16")
    batch = make_batch(spec, "cuda")
    for name in ("cudnn", "triton"):
        prepared = get_adapter(name).prepare(batch)
        prepared.run()  # compiles / builds outside the profiled range
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push("profile")
        prepared.run()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
        print(f"page {page} {name}: one launch profiled", flush=True)
