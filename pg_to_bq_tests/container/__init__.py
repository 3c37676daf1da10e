"""Tests of the container image (Dockerfile, entrypoint, podman build and runs)."""
