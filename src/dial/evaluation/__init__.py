"""Evaluation of user simulators (METHOD.md §6–7): metrics, statistics, judges and the report."""
