"""A Triton kernel that reads outside its buffer on purpose (for tests/faulty_adapters.py's fault-oob).
Imported only inside fault-oob's prepare, so merely discovering adapters never imports triton."""

import torch
import triton
import triton.language as tl


@triton.jit
def _read_far_kernel(
    src_ptr,  # [N] any float dtype
    dst_ptr,  # [N] same dtype
    offset,   # int64: elements past src_ptr to read from, far beyond N
    n_elements,
    BLOCK: tl.constexpr,
):
    block_id = tl.program_id(0)
    offsets = block_id * BLOCK + tl.arange(0, BLOCK)
    in_bounds = offsets < n_elements
    far = tl.load(src_ptr + offset + offsets)  # no mask: the point of this kernel
    tl.store(dst_ptr + offsets, far, mask=in_bounds)


def read_far_out_of_bounds(source: torch.Tensor, out: torch.Tensor, offset: int) -> torch.Tensor:
    """Launch the kernel: ``out`` gets whatever lies ``offset`` elements past ``source`` (a fault)."""
    flat_out = out.view(-1)
    n_elements = flat_out.numel()
    block = 1024
    _read_far_kernel[(triton.cdiv(n_elements, block),)](
        src_ptr=source, dst_ptr=flat_out, offset=offset, n_elements=n_elements, BLOCK=block)
    return out
