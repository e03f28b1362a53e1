"""Plugins for the whole test suite (pytest reads pytest_plugins only from the top-level conftest)."""

# postgres_dsn and redis_url: the local PostgreSQL and Redis, or a clear failure.
pytest_plugins = ("tests.fleet_services",)
