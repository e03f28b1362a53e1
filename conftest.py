"""Plugins for the whole test suite (pytest reads pytest_plugins only from the top-level conftest)."""

# postgres_dsn and redis_url: the local PostgreSQL and Redis, or a clear failure; key_prefix: a test's own
# Redis keys for the fleet tests.
pytest_plugins = ("tests.fleet_services", "tests.fleet_helpers")
