"""Measures: pure functions that take arrays and return numbers (no I/O, no models)."""
