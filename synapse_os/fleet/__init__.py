"""Fleets: one profile applied, verified and benchmarked across many hosts with Ansible.

`synapse fleet export` writes an Ansible role + example playbook that installs synapse on
each host and runs `synapse apply` / `verify` / `rollback` / `bench run` there (so every
host keeps its own journal and byte-exact rollback); `synapse fleet report` turns the
per-host results the play fetched into one table.
"""
