"""The harness between adapters and outputs: gate (correctness), timer, metrics, provenance,
sweep definitions, the isolated runner, results storage and the command line."""
