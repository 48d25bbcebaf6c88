"""Synapse: one declarative YAML profile -> a tuned, reproducible Linux system for local LLMs."""

__version__ = "0.1.0"
