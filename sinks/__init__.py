"""Sinks: where the clean stream lands. The data's last stop is PostgreSQL (sinks/postgres.py)."""
