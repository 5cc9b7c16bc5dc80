"""Credentials never reach the results store or the logs: everything kobench writes passes through `redact`.

Covered: Hugging Face tokens (`hf_...`), passwords in URLs (`scheme://user:PASSWORD@host`), secret-looking URL and
command-line parameters (`password=`, `token=`, `api_key=` ...), `Bearer` tokens, the value of any secret environment
variable (HF_TOKEN, *_TOKEN, *_SECRET*, *PASSWORD, *_API_KEY, *_ACCESS_KEY) wherever it appears, and the value of a
mapping key such as `password` or `hf_token`. Model outputs and task data are stored verbatim: they are the benchmark.
"""
from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}")
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@/\s]+)@")
SECRET_PARAMETER = re.compile(
    r"(?i)(?P<key>\b(?:password|passwd|pwd|token|api[_-]?key|secret|access[_-]?key)\s*[=:]\s*)"
    r"(?P<value>[^\s&'\",;}]+)")
BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
SECRET_ENV_NAME = re.compile(r"(?i)(^|_|PG)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)(_|$)")
SECRET_KEY = re.compile(r"(?i)^(\w+_)?(token|password|passwd|secret|secret_key|api_?key|access_key)$")
NOT_SECRET_KEYS = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
MIN_SECRET_LENGTH = 6  # shorter env values ("1", "true") would mask ordinary text


def secret_env_values() -> list[str]:
    """Values of the environment's secret-looking variables, longest first (so a value inside another is masked
    as part of the longer one)."""
    values = {value for name, value in os.environ.items()
              if SECRET_ENV_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every credential replaced by ***."""
    if not text:
        return text
    for value in secret_env_values():
        text = text.replace(value, MASK)
    text = URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = HF_TOKEN.sub(f"hf_{MASK}", text)
    text = BEARER.sub(lambda m: f"{m[1]}{MASK}", text)
    return SECRET_PARAMETER.sub(lambda m: m["key"] + (m["value"] if m["value"] == MASK else MASK), text)


def redact_value(value: Any) -> Any:
    """A JSON-like value (dict, list, str, number) with `redact` applied to every string in it, keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(k) if isinstance(k, str) else k:
                MASK if _secret_key(k) and isinstance(v, str) and v else redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


def _secret_key(key: Any) -> bool:
    """{"password": ...}, {"hf_token": ...}, {"api_key": ...}: the whole value is the secret."""
    name = key.replace("-", "_").lower() if isinstance(key, str) else ""
    return bool(SECRET_KEY.match(name)) and name not in NOT_SECRET_KEYS
