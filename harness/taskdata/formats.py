"""Imports every task's reader module so that each registers its format."""
from harness.taskdata import context_inference, dialogue_summary, generic, honorific, legal, md_translation  # noqa: F401
