"""Benchmarks: durable vs plain Celery chains vs DBOS Transact. See README.md."""
