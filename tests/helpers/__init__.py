"""Builders and helpers shared by test modules: `test_*.py` and `conftest.py` import from here, never from
each other."""
