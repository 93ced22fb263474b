"""Project-wide pytest configuration: fixture modules shared by unit and integration tests."""

pytest_plugins = [
    "tests.fixtures.postfix",
    "tests.fixtures.clamd",
    "tests.fixtures.dnsmasq",
]
