"""Latency: measurement protocol, tables, prediction, regeneration and validation."""
