"""Protocols: one callable per protocol, from a spec and its settings to run records (no argparse)."""
