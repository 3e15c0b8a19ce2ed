"""Shared pytest configuration: the test bed's fixtures (tests/env/fixtures.py) for every test."""

pytest_plugins = ["tests.env.fixtures"]
