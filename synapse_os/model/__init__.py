"""Model intake: GGUF files inspected in a sandbox, stored by content hash under
/var/ai-data/models, pinned by path and sha256 in a profile (`synapse model`)."""
