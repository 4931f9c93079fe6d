"""Codecs behind one registry, the worker pool, rendering and frame access."""
