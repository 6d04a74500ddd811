"""Filesystem primitives below every other layer: atomic writes (`atomic`) and safe names and paths (`safepath`)."""
