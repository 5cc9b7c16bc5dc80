"""Data files shipped with the harness (suites, hardware profiles) and data generators."""
