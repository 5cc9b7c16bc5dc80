"""Hardware profiles and memory budgets: will this model, at this precision, run these tasks on that card?

A profile (harness/data/hardware.yaml, plus the user's own files) names a memory budget. Before a model is loaded,
`plan_budget` estimates the memory of every task from the model's shape and the tasks' real request lengths and
picks the precision and batch size that fit; while it runs, `apply_memory_cap` holds the process to the budget.

The estimate, per task (docs/hardware.md has the derivation):

    weights     = params x bytes/param at the precision (int8/nf4 quantize the projection weights only)
    kv_cache    = 2 x layers x kv_heads x head_dim x act_bytes x batch x seq
    activations = working set of one layer: batch x seq x (4 x hidden + 3 x intermediate) x act_bytes
                  (+ batch x seq x intermediate x 4 for int8's int32 matmul output);
                  for log-likelihood tasks the largest of that, the logits (batch x seq x vocab x act_bytes)
                  and 2 x logits - kv_cache (lm-eval's log_softmax copy, made after the cache is freed)
    overhead    = CUDA context + cuBLAS workspace (GPU) or the Python/torch/lm-eval runtime (CPU)

with seq = longest prompt (+ continuation) + max_gen_toks, capped at the model's context length, and act_bytes = 2
(bf16/fp16, also the compute dtype of int8/nf4) or 4 (fp32).
"""
from __future__ import annotations

import difflib
import json
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from harness.errors import KobenchError
from harness.paths import PACKAGE_DIR

GIB = 2**30
# `kobench run` exits with 3 when the model does not fit the profile: not a user mistake (2), and the run is stored
BUDGET_EXCEEDED_EXIT_CODE = 3
PROFILES_FILE = PACKAGE_DIR / "data" / "hardware.yaml"
PROFILES_ENV = "KOBENCH_PROFILES"
PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
PROFILE_KEYS = {"kind", "vram_gib", "ram_gib", "bf16", "description"}

# Memory outside torch's allocator on a GPU: the CUDA context, cuBLAS workspaces and kernels loaded on first use.
# NVML counts it, torch.cuda.memory_reserved() does not. bench/hardware_budget.py measured 0.59 GiB after warm-up
# and 0.68-0.74 GiB (NVML peak - peak reserved) while models ran, on an H200 with torch 2.11 + CUDA 13.
CUDA_CONTEXT_BYTES = 768 * 2**20
# Resident memory of a Python process with torch, transformers and lm-eval imported, before any model is loaded.
CPU_RUNTIME_BYTES = 1 * GIB
CUDA_ALLOC_CONF = "expandable_segments:True"
MAX_AUTO_BATCH = {"gpu": 64, "cpu": 8}
# Bytes per projection weight: int8 (LLM.int8) one byte plus a per-row scale (ignored); nf4 half a byte plus one
# 8-bit absmax per 64-weight block and, with double quantization, one fp32 scale per 256 absmax values.
QUANTIZED_BYTES = {"int8": 1.0, "nf4": 0.5 + 1 / 64 + 4 / (64 * 256)}
FULL_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


# ---------------------------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HardwareProfile:
    """A named memory budget: a GPU of some VRAM (with or without bf16) or a CPU with some RAM."""

    name: str
    kind: str
    memory_gib: float
    bf16: bool
    description: str
    source: str

    @property
    def budget_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def full_precision(self) -> str:
        """The unquantized precision a model runs at on this hardware."""
        if self.kind == "cpu":
            return "fp32"
        return "bf16" if self.bf16 else "fp16"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _profile_error(path: Path | str, key: str, problem: str, fix: str) -> KobenchError:
    return KobenchError(f"profiles file {path}: {key}: {problem}. Fix: {fix}")


def parse_profiles(path: Path | str, data: Any) -> list[HardwareProfile]:
    """Validate one profiles document (`profiles: {name: {kind, vram_gib|ram_gib, bf16, description}}`)."""
    example = "profiles: {my-gpu: {kind: gpu, vram_gib: 24, bf16: true, description: ...}} (block style works too)"
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict) or not data["profiles"]:
        raise _profile_error(path, "profiles", "expected a top-level 'profiles:' mapping of name -> settings",
                             f"write it as {example}")
    unknown_top = set(data) - {"profiles"}
    if unknown_top:
        raise _profile_error(path, ", ".join(sorted(map(str, unknown_top))), "unknown top-level key",
                             "put every profile under 'profiles:'")
    out = []
    for name, spec in data["profiles"].items():
        key = f"profiles.{name}"
        if not isinstance(name, str) or not PROFILE_NAME.match(name):
            raise _profile_error(path, key, "bad profile name",
                                 "use lower-case letters, digits, '.', '_' or '-' (at most 64), e.g. rtx4080-16gb")
        if not isinstance(spec, dict):
            raise _profile_error(path, key, f"expected a mapping, got {type(spec).__name__}",
                                 "give kind, vram_gib (or ram_gib for kind: cpu), bf16 and description")
        unknown = set(spec) - PROFILE_KEYS
        if unknown:
            raise _profile_error(path, f"{key}.{sorted(map(str, unknown))[0]}", "unknown key",
                                 f"allowed keys: {', '.join(sorted(PROFILE_KEYS))}")
        kind = spec.get("kind", "gpu")
        if kind not in ("gpu", "cpu"):
            raise _profile_error(path, f"{key}.kind", f"got {kind!r}", "use kind: gpu or kind: cpu")
        memory_key = "vram_gib" if kind == "gpu" else "ram_gib"
        wrong_key = "ram_gib" if kind == "gpu" else "vram_gib"
        if wrong_key in spec:
            raise _profile_error(path, f"{key}.{wrong_key}", f"not used by a {kind} profile",
                                 f"write the budget as {memory_key}")
        if memory_key not in spec:
            also = " (or auto for this machine's RAM)" if kind == "cpu" else ""
            raise _profile_error(path, f"{key}.{memory_key}", "missing", f"add {memory_key}: <GiB>{also}")
        memory = spec[memory_key]
        if kind == "cpu" and memory == "auto":
            import psutil

            memory = round(psutil.virtual_memory().total / GIB, 2)
        if isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory <= 0:
            raise _profile_error(path, f"{key}.{memory_key}", f"expected a positive number of GiB, got {memory!r}",
                                 f"write e.g. {memory_key}: 24" + (" or auto" if kind == "cpu" else ""))
        bf16 = spec.get("bf16", kind == "gpu")
        if not isinstance(bf16, bool):
            raise _profile_error(path, f"{key}.bf16", f"expected true or false, got {bf16!r}",
                                 "write bf16: true for Ampere or newer GPUs, bf16: false otherwise")
        description = spec.get("description", "")
        if not isinstance(description, str):
            raise _profile_error(path, f"{key}.description", "expected text", "quote the description")
        out.append(HardwareProfile(name=name, kind=kind, memory_gib=float(memory), bf16=bf16,
                                   description=description, source=str(path)))
    return out


def _read_profiles_file(path: Path | str, builtin: bool = False) -> list[HardwareProfile]:
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise KobenchError(f"profiles file {path}: cannot read it ({exc.strerror or exc}). Fix: pass an existing "
                           f"YAML file to --profiles or {PROFILES_ENV}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise KobenchError(f"profiles file {path}: YAML syntax error at {where} ({getattr(exc, 'problem', exc)}). "
                           "Fix: correct the YAML") from None
    profiles = parse_profiles(path, data)
    return [replace(p, source="built-in") for p in profiles] if builtin else profiles


def profile_files(extra: Sequence[str | Path] = ()) -> list[str]:
    """User profile files: --profiles FILE (each) and KOBENCH_PROFILES (os.pathsep-separated), in that order."""
    from_env = [p for p in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if p.strip()]
    return [str(p) for p in extra] + from_env


def load_profiles(extra: Sequence[str | Path] = ()) -> dict[str, HardwareProfile]:
    """The built-in profiles plus the user's; a user profile may not reuse a name (results are stored by name)."""
    profiles = {p.name: p for p in _read_profiles_file(PROFILES_FILE, builtin=True)}
    for path in profile_files(extra):
        for profile in _read_profiles_file(path):
            if profile.name in profiles:
                other = profiles[profile.name].source
                raise _profile_error(path, f"profiles.{profile.name}", f"name already defined in {other}",
                                     "give your profile another name (stored results are grouped by it)")
            profiles[profile.name] = profile
    return profiles


def get_profile(name: str, extra: Sequence[str | Path] = ()) -> HardwareProfile:
    profiles = load_profiles(extra)
    if name not in profiles:
        near = difflib.get_close_matches(name, list(profiles), n=1, cutoff=0.5)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise KobenchError(f"--hardware {name}: unknown hardware profile.{hint} Known: {', '.join(profiles)} "
                           f"(see `kobench hardware`; add your own with --profiles FILE or {PROFILES_ENV})")
    return profiles[name]


# ---------------------------------------------------------------------------------------------------------------
# Model shape and parameter counts
# ---------------------------------------------------------------------------------------------------------------

def _first(config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


@dataclass(frozen=True)
class ModelDims:
    """The dimensions of a decoder-only transformer that decide its memory."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int | None = None

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        """From a transformers config object or a config.json dict (text_config of composite models is used)."""
        data = config if isinstance(config, dict) else config.to_dict()
        data = {**data, **(data.get("text_config") or {})}
        hidden = _first(data, "hidden_size", "n_embd", "d_model")
        layers = _first(data, "num_hidden_layers", "num_layers", "n_layer")
        heads = _first(data, "num_attention_heads", "n_head")
        vocab = data.get("vocab_size")
        missing = [n for n, v in (("hidden_size", hidden), ("num_hidden_layers", layers),
                                  ("num_attention_heads", heads), ("vocab_size", vocab)) if v is None]
        if missing:
            raise KobenchError(f"model config has no {', '.join(missing)}: kobench cannot estimate its memory. "
                               "Run it without --hardware")
        kv_heads = _first(data, "num_key_value_heads", "num_kv_heads") or heads
        return cls(vocab_size=int(vocab), hidden_size=int(hidden), num_layers=int(layers), num_heads=int(heads),
                   num_kv_heads=int(kv_heads), head_dim=int(data.get("head_dim") or hidden // heads),
                   intermediate_size=int(_first(data, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden),
                   tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
                   attention_bias=bool(data.get("attention_bias", False)), mlp_bias=bool(data.get("mlp_bias", False)),
                   max_position_embeddings=_first(data, "max_position_embeddings", "n_positions", "n_ctx"))

    def param_counts(self) -> ParamCounts:
        """Llama-style: embeddings, q/k/v/o (GQA: k and v have kv_heads), gate/up/down MLP, 2 RMSNorms a layer, a
        final norm, and lm_head unless tied to the embeddings."""
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q_out, kv_out = self.num_heads * hd, self.num_kv_heads * hd
        attention = h * q_out + 2 * h * kv_out + q_out * h
        mlp = 3 * h * i
        biases = (q_out + 2 * kv_out + h if self.attention_bias else 0) + (2 * i + h if self.mlp_bias else 0)
        embedding = self.vocab_size * h
        return ParamCounts(embedding=embedding, lm_head=0 if self.tie_word_embeddings else embedding,
                           linear=self.num_layers * (attention + mlp),
                           other=self.num_layers * (2 * h + biases) + h, source="config")

    def kv_cache_bytes(self, tokens: int, batch: int, act_bytes: int) -> int:
        """Keys and values of every layer for `batch` sequences of `tokens` tokens."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * act_bytes * batch * tokens


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by how quantization treats them: projections are quantized, the rest stays at full precision."""

    embedding: int
    lm_head: int
    linear: int
    other: int
    source: str = "config"

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.linear + self.other

    def weight_bytes(self, precision: str) -> int:
        if precision in QUANTIZED_BYTES:
            # bitsandbytes leaves embeddings, lm_head, norms and biases in the 16-bit compute dtype
            return int(self.linear * QUANTIZED_BYTES[precision]) + 2 * (self.embedding + self.lm_head + self.other)
        return FULL_BYTES[precision] * self.total

    def plus(self, other: ParamCounts) -> ParamCounts:
        return ParamCounts(self.embedding + other.embedding, self.lm_head + other.lm_head,
                           self.linear + other.linear, self.other + other.other, self.source)


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a .safetensors header (8-byte little-endian length, then JSON), no weights read."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {name: meta["shape"] for name, meta in header.items() if name != "__metadata__"}


def params_from_safetensors(directory: Path) -> ParamCounts | None:
    """Exact parameter counts of a local checkpoint from its safetensors headers (None when it has none)."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    counts = {"embedding": 0, "lm_head": 0, "linear": 0, "other": 0}
    for file in files:
        for name, shape in safetensors_shapes(file).items():
            numel = 1
            for dim in shape:
                numel *= dim
            if "lm_head" in name:
                counts["lm_head"] += numel
            elif "embed" in name or name.endswith(("wte.weight", "wpe.weight")):
                counts["embedding"] += numel
            elif len(shape) == 2 and name.endswith("weight"):
                counts["linear"] += numel
            else:
                counts["other"] += numel
    return ParamCounts(**counts, source="safetensors")


def read_model_config(path: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """The model's config with transformers' defaults filled in; the raw config.json for unknown architectures."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).to_dict()
    except Exception:  # custom code not trusted, unknown model_type: the raw file still has the dimensions
        file = Path(path) / "config.json"
        if file.exists():
            return json.loads(file.read_text(encoding="utf-8"))
        raise KobenchError(f"--hardware: cannot read the config of {path}, so its memory cannot be estimated. "
                           "Run it without --hardware") from None


def model_params(load_path: str, dims: ModelDims, adapter_path: str | None = None) -> ParamCounts:
    """Safetensors headers when the checkpoint is local (exact), else the count from the config's dimensions."""
    params = params_from_safetensors(Path(load_path)) if Path(load_path).is_dir() else None
    params = params or dims.param_counts()
    if adapter_path:
        adapter = params_from_safetensors(Path(adapter_path))
        if adapter:  # LoRA matrices stay at the compute precision
            params = params.plus(ParamCounts(0, 0, 0, adapter.total))
    return params


# ---------------------------------------------------------------------------------------------------------------
# Workload: the request lengths of the tasks
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskShape:
    """The longest request of a task: what sets its KV cache and activation size."""

    task: str
    prompt_tokens: int
    gen_tokens: int
    loglikelihood: bool
    n_requests: int = 1

    @property
    def seq_len(self) -> int:
        return self.prompt_tokens + self.gen_tokens


def measure_task_shapes(task_manager: Any, wanted: list[tuple[str, list[int] | None]], tokenizer: Any,
                        max_length: int, chat: bool = False, num_fewshot: int | None = None,
                        seed: int = 1234) -> list[TaskShape]:
    """Build each task's lm-eval requests exactly as the evaluation will (few-shot, chat template) and measure them."""
    shapes = []
    for name, indices in wanted:
        task = task_manager.load([name])["tasks"][name]
        # the same few-shot settings simple_evaluate applies
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
        task.build_all_requests(samples=indices, apply_chat_template=chat,
                                fewshot_as_multiturn=chat and bool(num_fewshot),
                                chat_template=_chat_renderer(tokenizer) if chat else None)
        shapes.append(_shape_of(name, task.instances, tokenizer, max_length))
    return shapes


def _chat_renderer(tokenizer: Any) -> Callable[..., str]:
    def render(history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:  # as HFLM renders it
        return tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             continue_final_message=not add_generation_prompt)
    return render


def _shape_of(name: str, instances: list[Any], tokenizer: Any, max_length: int) -> TaskShape:
    if not instances:
        return TaskShape(name, 1, 0, False, 0)
    loglikelihood = instances[0].request_type != "generate_until"
    contexts = sorted({str(inst.args[0]) for inst in instances})
    lengths = dict(zip(contexts, _token_lengths(tokenizer, contexts)))
    if loglikelihood:
        continuations = sorted({str(inst.args[1]) for inst in instances if len(inst.args) > 1})
        cont_len = dict(zip(continuations, _token_lengths(tokenizer, continuations)))
        prompt = max(lengths[str(i.args[0])] + (cont_len[str(i.args[1])] if len(i.args) > 1 else 0)
                     for i in instances)
        gen = 0
    else:
        prompt = max(lengths.values())
        gen = max(int((inst.args[1] or {}).get("max_gen_toks", 256)) for inst in instances)
    prompt += 1  # a BOS token the tokenizer may add
    # lm-eval truncates the context from the left so that context + generation fit the model's length
    prompt = max(1, min(prompt, max_length - gen)) if gen < max_length else 1
    return TaskShape(name, prompt, min(gen, max_length), loglikelihood, len(instances))


def _token_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


# ---------------------------------------------------------------------------------------------------------------
# Estimates and the precision / batch choice
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one task at one precision and batch size (bytes)."""

    task: str
    precision: str
    batch_size: int
    seq_len: int
    n_params: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.overhead_bytes

    def describe(self) -> str:
        return (f"{human_bytes(self.total_bytes)} at {self.precision}, batch {self.batch_size} x {self.seq_len} "
                f"tokens (weights {human_bytes(self.weights_bytes)} + KV cache {human_bytes(self.kv_cache_bytes)} + "
                f"activations {human_bytes(self.activation_bytes)} + overhead {human_bytes(self.overhead_bytes)})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes, "total_gib": round(self.total_bytes / GIB, 3)}


def human_bytes(size: float) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB / 10 else f"{size / 2**20:.1f} MiB"


def act_bytes_of(precision: str) -> int:
    """Bytes of an activation / KV value: quantized models compute in 16-bit."""
    return 4 if precision == "fp32" else 2


def estimate_memory(dims: ModelDims, params: ParamCounts, shape: TaskShape, precision: str, batch_size: int,
                    kind: str = "gpu") -> MemoryEstimate:
    """The module docstring's formula for one task."""
    act = act_bytes_of(precision)
    seq = shape.seq_len
    kv_cache = dims.kv_cache_bytes(seq, batch_size, act)
    activations = batch_size * seq * (4 * dims.hidden_size + 3 * dims.intermediate_size) * act
    if precision == "int8":  # LLM.int8 accumulates a projection's output in int32 before scaling it back
        activations += batch_size * seq * dims.intermediate_size * 4
    if shape.loglikelihood:
        # The forward ends holding the KV cache and the [batch, seq, vocab] logits; lm-eval's log_softmax then makes
        # a second logits-sized tensor, by which time the cache is freed. So KV + activations = max(KV + working
        # set, KV + logits, 2 x logits).
        logits = batch_size * seq * dims.vocab_size * act
        activations = max(activations, logits, 2 * logits - kv_cache)
    return MemoryEstimate(
        task=shape.task, precision=precision, batch_size=batch_size, seq_len=seq, n_params=params.total,
        weights_bytes=params.weight_bytes(precision), kv_cache_bytes=kv_cache, activation_bytes=activations,
        overhead_bytes=CUDA_CONTEXT_BYTES if kind == "gpu" else CPU_RUNTIME_BYTES)


@dataclass
class BudgetPlan:
    """The decision for a run: precision, batch size per task, and whether it fits the profile at all."""

    profile: HardwareProfile
    precision: str
    fits: bool
    batch_sizes: dict[str, int] = field(default_factory=dict)
    estimates: dict[str, MemoryEstimate] = field(default_factory=dict)
    tried: dict[str, MemoryEstimate] = field(default_factory=dict)  # precision -> its largest task estimate
    hint: str = ""

    @property
    def quantization(self) -> str | None:
        return self.precision if self.precision in QUANTIZED_BYTES else None

    @property
    def compute_dtype(self) -> str:
        """The torch dtype name the model computes in (bitsandbytes' compute dtype when quantized)."""
        return self.profile.full_precision if self.quantization else self.precision

    @property
    def worst(self) -> MemoryEstimate:
        return max(self.estimates.values(), key=lambda e: e.total_bytes) if self.estimates else \
            max(self.tried.values(), key=lambda e: e.total_bytes)

    def summary(self) -> str:
        """One line: what was estimated against what budget."""
        profile = f"{self.profile.name}'s {human_bytes(self.profile.budget_bytes)}"
        if self.fits:
            return f"fits {profile}: largest task {self.worst.task} needs {self.worst.describe()}"
        smallest = min(self.tried.values(), key=lambda e: e.total_bytes)
        tried = ", ".join(f"{p} {human_bytes(e.total_bytes)}" for p, e in self.tried.items())
        return (f"budget exceeded: {smallest.task} needs {smallest.describe()}, more than {profile} "
                f"(tried {tried}){self.hint}")

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.to_dict(), "budget_bytes": self.profile.budget_bytes,
                "precision": self.precision, "quantization": self.quantization, "fits": self.fits,
                "batch_sizes": self.batch_sizes,
                "estimates": {t: e.to_dict() for t, e in self.estimates.items()},
                "tried": {p: e.to_dict() for p, e in self.tried.items()}}


def candidate_precisions(profile: HardwareProfile, quantize: str, dtype: str = "auto") -> list[str]:
    """Precisions to try, best first: full precision, then (with --quantize auto, on a GPU) int8, then nf4."""
    full = profile.full_precision if dtype == "auto" else _short_dtype(dtype)
    if full == "bf16" and not profile.bf16:
        raise KobenchError(f"--dtype {dtype}: profile {profile.name} has no bf16; use fp16 or auto")
    if quantize in QUANTIZED_BYTES:
        return [quantize]
    if quantize == "auto" and profile.kind == "gpu":
        return [full, "int8", "nf4"]
    return [full]


def _short_dtype(dtype: str) -> str:
    names = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "fp32": "fp32",
             "float32": "fp32"}
    if dtype not in names:
        raise KobenchError(f"--dtype {dtype}: unknown; use auto, bf16, fp16 or fp32")
    return names[dtype]


def plan_budget(profile: HardwareProfile, dims: ModelDims, params: ParamCounts, shapes: list[TaskShape],
                quantize: str = "none", dtype: str = "auto", batch_size: str = "auto") -> BudgetPlan:
    """Pick the first precision at which every task fits at batch 1 (or the fixed --batch-size), then, with
    --batch-size auto, the largest power-of-two batch (up to 64 on a GPU, 8 on a CPU) that fits each task."""
    fixed = None if batch_size == "auto" else int(batch_size)
    budget = profile.budget_bytes
    plan = BudgetPlan(profile=profile, precision="", fits=False)
    for precision in candidate_precisions(profile, quantize, dtype):
        at_min = [estimate_memory(dims, params, s, precision, fixed or 1, profile.kind) for s in shapes]
        plan.tried[precision] = max(at_min, key=lambda e: e.total_bytes)
        if all(e.total_bytes <= budget for e in at_min):
            plan.precision, plan.fits = precision, True
            break
    if not plan.fits:
        plan.precision = next(iter(plan.tried))
        if quantize == "none" and profile.kind == "gpu":
            for precision in QUANTIZED_BYTES:
                needs = max(estimate_memory(dims, params, s, precision, fixed or 1, profile.kind).total_bytes
                            for s in shapes)
                if needs <= budget:
                    plan.hint = f"; --quantize auto would load it as {precision} ({human_bytes(needs)})"
                    break
        return plan
    for shape in shapes:
        best = estimate_memory(dims, params, shape, plan.precision, fixed or 1, profile.kind)
        size = 2
        while fixed is None and size <= min(MAX_AUTO_BATCH[profile.kind], max(shape.n_requests, 1)):
            candidate = estimate_memory(dims, params, shape, plan.precision, size, profile.kind)
            if candidate.total_bytes > budget:
                break
            best, size = candidate, size * 2
        plan.batch_sizes[shape.task] = best.batch_size
        plan.estimates[shape.task] = best
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Enforcement and measurement on a GPU
# ---------------------------------------------------------------------------------------------------------------

def prepare_cuda_allocator() -> None:
    """Expandable segments keep torch's caching allocator from fragmenting under a cap (without them the growing
    KV cache and freed MLP blocks leave reserved memory well above allocated). Read once, at CUDA's first use."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF)


def cuda_index(device: str) -> int:
    import torch

    return int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()


def apply_memory_cap(profile: HardwareProfile, device: str) -> dict[str, Any]:
    """Hold torch's allocator on this card to the profile's budget, less the CUDA context that lives outside it:
    fraction = (budget - CUDA context) / card total. A budget larger than the card cannot be emulated."""
    import torch

    index = cuda_index(device)
    props = torch.cuda.get_device_properties(index)
    total = props.total_memory
    # nvidia-smi's total (the profiles' unit) is a little above what CUDA reports: allow 2 % before refusing
    if profile.budget_bytes > total * 1.02:
        raise KobenchError(f"--hardware {profile.name}: its {profile.memory_gib:.2f} GiB budget is more than this "
                           f"GPU has ({total / GIB:.2f} GiB, {props.name}). Pick a profile no larger than the card")
    fraction = min(1.0, max(profile.budget_bytes - CUDA_CONTEXT_BYTES, 0) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return {"card": props.name, "card_total_bytes": total, "memory_fraction": round(fraction, 4)}


def device_memory_used(device: str) -> int | None:
    """Memory in use on the whole card as NVML reports it (all processes, CUDA context included), or None."""
    import torch

    index = cuda_index(device)
    try:
        return int(torch.cuda.device_memory_used(index))
    except Exception:  # no NVML through torch: ask pynvml (nvidia-ml-py) by the same index
        try:
            import pynvml

            pynvml.nvmlInit()
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
        except Exception:
            return None


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM from torch's allocator, or a cuBLAS/bitsandbytes allocation failure reported as RuntimeError."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(
        text in str(exc) for text in ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation"))
