"""kobench: benchmark harness for Korean LLMs."""
