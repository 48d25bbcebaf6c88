"""Boot images in QEMU and prove every profile setting is live: `synapse vm test|run`."""
