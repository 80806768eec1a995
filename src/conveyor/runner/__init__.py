"""The runner: the loop that advances jobs, and its steps."""

from conveyor.runner.runner import ALL_ROLES, STEPS, Runner

__all__ = ["ALL_ROLES", "STEPS", "Runner"]
