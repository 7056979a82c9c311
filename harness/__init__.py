"""The harness between adapters and outputs: the case language (`harness.cases`), measuring cells and runs
(`harness.measure`), the cuDNN release tooling (`harness.releases`) and the command line and asv glue
(`harness.frontends`), over the `defaults` and `errors` they share."""
