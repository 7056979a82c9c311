"""The project's own GPU kernels (Triton). Import a kernel module only where triton is installed:
`kernels.paged_attention` imports triton at module level, the adapters import it lazily."""
