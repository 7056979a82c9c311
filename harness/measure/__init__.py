"""Measuring a cell and a run: the gate, the timers, one cell, the isolated runner and the run's session,
figures and ceilings, provenance, result rows, and the capability probe (gate-only cells of the runner)."""
