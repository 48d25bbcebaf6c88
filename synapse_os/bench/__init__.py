"""`synapse bench`: llama-bench runs with provenance, statistics against a baseline, reports."""
