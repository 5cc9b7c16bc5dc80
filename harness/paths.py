"""Where kobench finds its tasks, caches converted models and keeps the default results store."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def tasks_dir() -> Path:
    """The lm-eval include path holding one folder per kobench task (overridable with KOBENCH_TASKS_DIR)."""
    return Path(os.environ.get("KOBENCH_TASKS_DIR", REPO_ROOT / "tasks")).resolve()


def cache_dir() -> Path:
    """Converted embedded models and other derived artefacts (overridable with KOBENCH_CACHE)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kobench"
    path = Path(os.environ.get("KOBENCH_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_url() -> str:
    """KOBENCH_DB if set, else `results.db` at the repository root."""
    return os.environ.get("KOBENCH_DB") or str(REPO_ROOT / "results.db")
