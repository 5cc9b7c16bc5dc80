"""kobench: benchmark harness for Korean LLMs."""
import os as _os

# Offline by default: huggingface_hub reads these once, at import, and lm-eval otherwise waits on hub timeouts.
# `kobench ... --online` (or KOBENCH_ONLINE=1) lifts them before any Hugging Face library is imported.
if _os.environ.get("KOBENCH_ONLINE") != "1":
    _os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
