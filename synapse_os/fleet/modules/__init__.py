"""Ansible modules shipped in the exported role's library/ (copied, never imported here:
they run on the managed host under Ansible's own Python)."""
