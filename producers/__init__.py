"""Producers: one module per provider, each a Source that yields records for its raw.<source> topic."""
