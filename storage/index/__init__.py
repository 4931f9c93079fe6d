"""The index: the SQL schema (SQLite | PostgreSQL), its migrations, query compilation."""
