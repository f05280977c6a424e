"""Reliability suites: protocol fuzzing, misbehaving clients, engine faults, soak.

The heavy versions are marked `slow` and run by `nox -s stress`; tests/server/test_reliability.py
runs short versions of the same checks in the default test run.
"""
