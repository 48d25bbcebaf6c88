"""Bootable images from a profile: `synapse image build` (disk) and `synapse build-iso`."""
