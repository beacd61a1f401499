"""pgvault: back up, restore and verify PostgreSQL databases as plain SQL."""

__version__ = "0.2.0"
