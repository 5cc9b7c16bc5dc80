"""Imports every task's reader module so that each registers its format."""
from harness.taskdata import context_inference, generic  # noqa: F401
