"""Commands that run outside the worker: the `tickflow` CLI, selftest, measuring helpers."""
