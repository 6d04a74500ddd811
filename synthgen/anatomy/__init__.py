"""Anatomy: label vocabulary, label-map operations and the procedural phantom."""
