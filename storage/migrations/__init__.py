"""Alembic migrations of the index schema (run by :func:`storage.index.engine.upgrade`)."""
