"""Test support shared by every test tree (tests/, services/*/tests, libs/*/tests): a dev dependency only."""

from flotilla_testkit.conditions import ConditionNotMet, eventually, eventually_sync

__all__ = ["ConditionNotMet", "eventually", "eventually_sync"]
