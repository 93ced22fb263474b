"""Project-wide pytest configuration: fixture modules shared by unit and integration tests."""

import asyncio

import pytest

import filterd.registry  # noqa: F401  (installs the parameter table config reads)
from filterd.eventloop import WorkerLoop
from filterd.log import RateLimitedLog

pytest_plugins = [
    "tests.fixtures.postfix",
    "tests.fixtures.clamd",
    "tests.fixtures.dnsmasq",
]


def pytest_asyncio_loop_factories(config, item):
    """Async tests run on asyncio's loop; those marked ``worker_loop`` also on the loop
    ``filterd serve`` runs its workers on (it holds replies until it is about to poll)."""
    if item.get_closest_marker("worker_loop") is not None:
        return {"asyncio": asyncio.new_event_loop, "worker": WorkerLoop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(autouse=True)
def _fresh_log_rate_limits():
    """Each test sees its own warnings: none is held back because another test just
    logged one of the same kind (filterd.log.RateLimitedLog)."""
    RateLimitedLog.reset_all()
