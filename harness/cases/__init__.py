"""The case language: built-in sweeps, sweep files, models, the command line's selection of cases, a
case's reproducer command, and the deterministic split of a selection's cases over hosts (shards)."""
