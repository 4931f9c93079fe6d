"""Alembic environment: runs on the connection :mod:`storage.index.engine` hands over.

There is no alembic.ini: the migrations ship as package data and are always run
programmatically (``arca db upgrade`` or automatically when the archive opens).
"""

from __future__ import annotations

from alembic import context

from storage.index.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through storage.index.engine.upgrade_index")

# render_as_batch: SQLite alters tables by copy-and-move; Alembic's batch mode does that.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
