"""Shared pytest configuration. Area fixtures live in tests/<area>/conftest.py."""
