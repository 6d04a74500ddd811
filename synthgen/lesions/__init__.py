"""Lesion engine: specs, shapes, appearance, insertion into real CT."""
