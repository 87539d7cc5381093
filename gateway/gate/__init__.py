"""The gate: maps stability verdicts to actions (observe, annotate, block, rescue) by policy."""
