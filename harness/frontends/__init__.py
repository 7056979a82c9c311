"""The command line (``paged-bench``, with its progress display) and the asv glue the benchmarks/ classes
share: the harness's entry points, the only modules besides `harness.releases` that may import reports."""
