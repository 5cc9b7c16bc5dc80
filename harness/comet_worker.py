"""Scores (src, mt, ref) triples with an unbabel-comet model. Runs inside the COMET venv, not in kobench's.

unbabel-comet pins transformers<5, huggingface-hub<1 and numpy<2, so it cannot share kobench's environment; kobench
runs this file with the COMET venv's python: `python comet_worker.py IN.json OUT.json`. It imports nothing from
kobench. IN: {"model": local dir, .ckpt file or Hugging Face id, "samples": [{"src", "mt", "ref"}], "batch_size",
"gpus"}. OUT: {"status": "ok", "system_score", "scores", "checkpoint"} or {"status": "not_computed", "reason"}.
Offline only: a model that is not on disk (or in the local Hugging Face cache) is "not computed", never downloaded.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def find_checkpoint(model: str) -> tuple[Path | None, str]:
    """(checkpoint path, '') or (None, why not) for a model directory, a .ckpt file or a cached hub id."""
    path = Path(model).expanduser()
    if path.is_file():
        return path, ""
    if path.is_dir():
        ckpt = path / "checkpoints" / "model.ckpt"
        return (ckpt, "") if ckpt.is_file() else (None, f"{path} has no checkpoints/model.ckpt")
    if path.is_absolute() or model.startswith("."):
        return None, f"{model}: no such file or directory"
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id=model, local_files_only=True))
    except Exception as exc:  # not cached (LocalEntryNotFoundError), bad id
        return None, (f"{model} is not in the local Hugging Face cache ({type(exc).__name__}); COMET runs offline, "
                      "so download it (and its encoder) once or pass a local checkpoint directory")
    ckpt = snapshot / "checkpoints" / "model.ckpt"
    return (ckpt, "") if ckpt.is_file() else (None, f"{model}: the cached snapshot has no checkpoints/model.ckpt")


def main(in_path: str, out_path: str) -> None:
    request = json.loads(Path(in_path).read_text(encoding="utf-8"))
    checkpoint, reason = find_checkpoint(request["model"])
    if checkpoint is None:
        result = {"status": "not_computed", "reason": reason}
    else:
        from comet import load_from_checkpoint

        try:
            model = load_from_checkpoint(str(checkpoint), local_files_only=True)
        except OSError as exc:  # the encoder named in hparams.yaml (pretrained_model) is not on disk
            result = {"status": "not_computed",
                      "reason": f"{checkpoint}: its encoder cannot be loaded offline ({str(exc).splitlines()[0]})"}
        else:
            prediction = model.predict(request["samples"], batch_size=int(request.get("batch_size", 8)),
                                       gpus=int(request.get("gpus", 0)), progress_bar=False)
            result = {"status": "ok", "system_score": float(prediction.system_score),
                      "scores": [float(s) for s in prediction.scores], "checkpoint": str(checkpoint)}
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
