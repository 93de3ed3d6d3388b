"""Accuracy of subnets: the oracle (real evaluations, cached), the surrogate fitted on them, sweeps."""
