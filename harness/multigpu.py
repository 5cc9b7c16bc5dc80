"""Scale-out on the engines kobench already uses: data parallel through accelerate, model parallel through
accelerate's device_map, vLLM tensor parallel, and screening candidates placed on free GPUs.

Data parallel (`kobench run --num-gpus N`): the command re-launches itself as `accelerate launch --num_processes N
-m harness run ...`. Every rank loads the whole model on its own GPU exactly as a single-GPU run does (same loader,
adapter and quantization handling), lm-eval shards the items over the ranks and gathers the per-sample results on
rank 0, and only rank 0 touches the results store. Rank 0 decides which tasks are reused from the store and
broadcasts the list, so every rank runs the same evaluations in the same order (the collectives must line up).
On CPU the same path runs over gloo, which is how the tests check it.

Model parallel (`--parallelize`): one process, the model split over every visible GPU by lm-eval's
`parallelize=True` (device_map="auto"). vLLM (`--backend vllm --tensor-parallel N`): lm-eval's vLLM model.

Screening (`kobench screen --gpus 0,1,...`): one `kobench run` process per candidate, pinned to its GPU(s) with
CUDA_VISIBLE_DEVICES, started as GPUs free up; all of them write to the one shared store.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.errors import KobenchError

RESULT_FILE_ENV = "KOBENCH_LAUNCH_RESULT"  # set by the launching `kobench run`: where rank 0 leaves its RunResult
BACKENDS = ("hf", "vllm")
# lm-eval waits at a collective while rank 0 writes a task to the store (up to the store's busy timeout) or computes
# corpus metrics; a rank that dies ends the whole launch anyway (torchrun stops the others), so the timeout is long.
COLLECTIVE_TIMEOUT = timedelta(hours=24)


@dataclass
class ParallelConfig:
    """How one run spreads over devices. Stored with the run (config.parallel) when it is not the single-device
    default; it never changes scores, so it stays out of the task fingerprints (except the vLLM engine)."""

    num_gpus: int = 1  # data-parallel processes, one per GPU
    parallelize: bool = False  # model parallel: one process, layers spread over all visible GPUs
    backend: str = "hf"  # hf (transformers through lm-eval) or vllm
    tensor_parallel: int = 1  # vLLM tensor-parallel size

    @property
    def is_default(self) -> bool:
        return self == ParallelConfig()

    @property
    def own_loader(self) -> bool:
        """Whether the model is loaded by lm-eval (model parallel, vLLM) instead of harness.models.load_model."""
        return self.parallelize or self.backend == "vllm"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, config: RunConfig) -> ParallelConfig:
        """Check the combination of flags before anything is loaded or launched; raise KobenchError."""
        if self.num_gpus < 1:
            raise KobenchError(f"--num-gpus {self.num_gpus}: must be 1 or more")
        if self.tensor_parallel < 1:
            raise KobenchError(f"--tensor-parallel {self.tensor_parallel}: must be 1 or more")
        if self.backend not in BACKENDS:
            raise KobenchError(f"--backend {self.backend}: use hf or vllm")
        if self.tensor_parallel > 1 and self.backend != "vllm":
            raise KobenchError(f"--tensor-parallel {self.tensor_parallel}: tensor parallelism needs --backend vllm; "
                               "with the hf backend use --parallelize (model parallel) or --num-gpus (data parallel)")
        if self.num_gpus > 1 and self.own_loader:
            what = "--parallelize" if self.parallelize else "--backend vllm"
            fix = "--tensor-parallel N" if self.backend == "vllm" else "one of them"
            raise KobenchError(f"--num-gpus {self.num_gpus} with {what}: data parallel runs one model copy per GPU, "
                               f"{what} spreads one copy over the GPUs; pass {fix}")
        if self.parallelize and self.backend == "vllm":
            raise KobenchError("--parallelize with --backend vllm: vLLM splits the model itself; "
                               "pass --tensor-parallel N instead of --parallelize")
        if config.device.startswith("cuda:") and (self.num_gpus > 1 or self.own_loader):
            raise KobenchError(f"--device {config.device}: a multi-GPU run chooses its GPUs itself; pass --device "
                               "cuda (or auto) and pick the GPUs with CUDA_VISIBLE_DEVICES")
        if self.own_loader and config.hardware != "unspecified":
            raise KobenchError(f"--hardware {config.hardware}: a hardware profile describes one card and the "
                               "hf loader; run profiles without --parallelize / --backend vllm")
        if self.own_loader and config.quantize != "none":
            what = "--parallelize" if self.parallelize else "--backend vllm"
            raise KobenchError(f"--quantize {config.quantize} with {what}: not supported; quantize on one GPU "
                               "(drop the flag) or evaluate at full precision over several GPUs")
        if self.backend == "vllm":
            if find_spec("vllm") is None:
                raise KobenchError("--backend vllm: vLLM is not installed. Install it on a CUDA machine "
                                   "(pip install vllm) or use --backend hf")
            if config.device == "cpu":
                raise KobenchError("--backend vllm: kobench runs vLLM on CUDA GPUs only; pass --device cuda or auto")
        return self


def is_main_process() -> bool:
    """False in the non-zero ranks of a launched data-parallel run (they print nothing and write nothing)."""
    return int(os.environ.get("RANK", "0")) == 0


def launched_by_kobench() -> bool:
    """True inside the processes that `kobench run --num-gpus N` launched (rank 0 reports back through a file)."""
    return bool(os.environ.get(RESULT_FILE_ENV))


def needs_launch(parallel: ParallelConfig) -> bool:
    """`--num-gpus N` asked for, and this process is not one of an already launched group."""
    return parallel.num_gpus > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1


# ---------------------------------------------------------------------------------------------------------------
# Command construction: RunConfig -> `kobench run` flags -> `accelerate launch ... -m harness run ...`
# ---------------------------------------------------------------------------------------------------------------

_SCALAR_FLAGS = {"model": "--model", "adapter": "--adapter", "suite": "--suite", "limit": "--limit",
                 "hardware": "--hardware", "quantize": "--quantize", "db": "--db", "device": "--device",
                 "batch_size": "--batch-size", "num_fewshot": "--num-fewshot", "chat_template": "--chat-template",
                 "seed": "--seed", "decode": "--decode"}
_BOOL_FLAGS = {"force": "--force", "online": "--online", "trust_remote_code": "--trust-remote-code",
               "refined": "--refined"}
_LIST_FLAGS = {"tasks", "categories", "profiles", "data"}  # written out below, each in its own shape


def run_argv(config: RunConfig, parallel: ParallelConfig | None = None, as_json: bool = False) -> list[str]:
    """The `kobench run` flags that rebuild `config` in another process (the launched ranks, screening workers).

    A config field without a flag must be at its default: anything else could not reach the other process."""
    from harness.store.db import normalize_url

    defaults = RunConfig(model=config.model)
    argv: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in _SCALAR_FLAGS:
            if f.name == "db":
                value = normalize_url(value) if value else None  # relative paths mean the same in every process
            if value is not None and (f.name in ("model", "db") or value != getattr(defaults, f.name)):
                argv += [_SCALAR_FLAGS[f.name], str(value)]
        elif f.name in _BOOL_FLAGS:
            if value:
                argv.append(_BOOL_FLAGS[f.name])
        elif f.name == "tasks":
            if value and not config.suite:  # a validated suite has filled `tasks`; the suite name says it again
                argv += ["--tasks", ",".join(value)]
        elif f.name == "categories":
            if value:
                argv += ["--categories", ",".join(value)]
        elif f.name == "profiles":
            for path in value:
                argv += ["--profiles", str(path)]
        elif f.name == "data":
            for task, path in value.items():
                argv += ["--data", f"{task}={path}"]
        elif value != getattr(defaults, f.name):
            raise KobenchError(f"{f.name}={value!r}: has no `kobench run` flag, so it cannot reach the processes of a "
                               "multi-GPU run; leave it at its default there")
    parallel = parallel or ParallelConfig()
    if parallel.num_gpus > 1:
        argv += ["--num-gpus", str(parallel.num_gpus)]
    if parallel.parallelize:
        argv.append("--parallelize")
    if parallel.backend != "hf":
        argv += ["--backend", parallel.backend]
    if parallel.tensor_parallel > 1:
        argv += ["--tensor-parallel", str(parallel.tensor_parallel)]
    if as_json:
        argv.append("--json")
    return argv


def free_port() -> int:
    """A TCP port nobody listens on now, for the launch's rendezvous (two launches at once must not share one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(argv: list[str], num_processes: int, port: int) -> list[str]:
    """`accelerate launch --num_processes N -m harness run ARGV` with this interpreter (the same venv).

    --multi_gpu picks torchrun's launcher even where accelerate sees no GPU; on CPU the ranks then join over gloo
    (ACCELERATE_USE_CPU, set by launch_data_parallel)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "harness", "run", *argv]


def _launch_device(device: str, num_gpus: int) -> str:
    """cpu or cuda for a data-parallel launch, with enough GPUs for one process each."""
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    visible = torch.cuda.device_count()
    if visible < num_gpus:
        raise KobenchError(f"--num-gpus {num_gpus}: only {visible} CUDA device(s) visible "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
                           f"Pass --num-gpus {max(visible, 1)} or make more GPUs visible")
    return "cuda"


def launch_data_parallel(config: RunConfig, parallel: ParallelConfig, as_json: bool, echo_stdout: bool = True,
                         progress: Callable[[str], None] | None = None) -> Any:
    """Validate here (one clean error line for a user mistake), then run the launched group and return rank 0's
    RunResult. Rank 0 prints its own progress and result on the shared terminal (its stdout is dropped when
    `echo_stdout` is False: `kobench screen` prints one ranking instead)."""
    from harness.models import EMBEDDED_MODELS, convert_embedded, resolve_model
    from harness.runner import RunResult

    config.validate()
    parallel.validate(config)
    spec = resolve_model(config.model, config.adapter, online=config.online, trust_remote_code=config.trust_remote_code)
    if spec.details.get("embedded") and not spec.load_path:
        convert_embedded(EMBEDDED_MODELS[spec.name], progress)  # once here, not N times at once in the ranks
    device = _launch_device(config.device, parallel.num_gpus)
    command = launch_command(run_argv(config, parallel, as_json), parallel.num_gpus, free_port())
    with tempfile.TemporaryDirectory(prefix="kobench-launch-") as tmp:
        result_file = Path(tmp) / "result.json"
        env = {**os.environ, RESULT_FILE_ENV: str(result_file)}
        if device == "cpu":
            env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel.num_gpus)))
        proc = subprocess.run(command, env=env, check=False, stdout=None if echo_stdout else subprocess.DEVNULL)
        if not result_file.exists():
            raise KobenchError(f"--num-gpus {parallel.num_gpus}: the data-parallel run failed (exit code "
                               f"{proc.returncode}); the ranks' messages are above")
        return RunResult(**json.loads(result_file.read_text(encoding="utf-8")))


def report_to_launcher(result: Any) -> None:
    """Rank 0 of a kobench-launched group leaves its RunResult for the launching process."""
    path = os.environ.get(RESULT_FILE_ENV)
    if path and is_main_process():
        Path(path).write_text(json.dumps(result.to_json(), ensure_ascii=False), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Ranks: which process this is, what it may do, and the collectives kobench adds to lm-eval's
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class DataParallel:
    """This process's place in a launched data-parallel group. Only rank 0 (the writer) opens the store."""

    rank: int
    world_size: int
    device: str
    accelerator: Any = field(repr=False, default=None)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, config: RunConfig, parallel: ParallelConfig) -> DataParallel | None:
        """The group this process was launched into (torchrun's WORLD_SIZE > 1), or None for a plain process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        if parallel.num_gpus not in (1, world):
            raise KobenchError(f"--num-gpus {parallel.num_gpus}: this process was launched as one of {world}; "
                               f"pass --num-gpus {world} or launch {parallel.num_gpus} processes")
        if parallel.own_loader:
            raise KobenchError(f"launched as one of {world} processes: --parallelize and --backend vllm run in one "
                               "process; start them without accelerate launch")
        if config.device.startswith("cuda:"):
            raise KobenchError(f"--device {config.device}: each launched process takes its own GPU; pass --device "
                               "cuda or auto")
        import torch
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
        accelerator = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)])
        if accelerator.num_processes != world:
            raise KobenchError(f"launched as one of {world} processes, but accelerate joined "
                               f"{accelerator.num_processes}; launch with `kobench run --num-gpus {world}`")
        device = "cpu" if cpu else f"cuda:{accelerator.local_process_index}"
        dp = cls(rank=accelerator.process_index, world_size=world, device=device, accelerator=accelerator)
        atexit.register(dp.close)
        return dp

    def share_todo(self, names: list[str] | None) -> list[str]:
        """Rank 0 passes the tasks it will compute (the rest are reused or over budget); every rank gets them."""
        import torch.distributed as dist

        box = [names if self.is_writer else None]
        dist.broadcast_object_list(box, src=0)
        return list(box[0] or [])

    def attach(self, lm: Any) -> Any:
        """Make an lm-eval HFLM around an already-loaded model shard its requests over the group: lm-eval's own
        data-parallel path (HFLM with a model name under accelerate) does the same, but only on CUDA and only with
        its own loader."""
        lm.accelerator = self.accelerator
        lm._rank = self.rank
        lm._world_size = self.world_size
        lm.kobench_data_parallel = self
        return lm

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def gather_counters(lm: Any) -> None:
    """After a task: every rank's token counts summed, the slowest rank's time kept, so tokens/s is the group's."""
    dp = getattr(lm, "kobench_data_parallel", None)
    if dp is None:
        return
    import torch.distributed as dist

    everyone: list[Any] = [None] * dp.world_size
    dist.all_gather_object(everyone, dict(lm.counters))
    lm.counters = {key: (max if key.endswith("_s") else sum)(c[key] for c in everyone) for key in lm.counters}


def retries_oom(lm: Any) -> bool:
    """Whether an out-of-memory error may be retried at a smaller batch: not where other ranks wait in a
    collective (data parallel), not where the engine sizes its own batches (vLLM)."""
    return getattr(lm, "kobench_data_parallel", None) is None and not getattr(lm, "kobench_vllm", False)


def fingerprint(base: str, parallel: ParallelConfig, dp: DataParallel | None, config: RunConfig) -> str:
    """A task fingerprint, extended only where the parallel setup can change scores:
    - vLLM is another engine (its own kernels and sampling code);
    - lm-eval draws few-shot examples in document order within each rank, so with --num-fewshot the draws depend
      on the number of ranks."""
    extra: dict[str, Any] = {}
    if parallel.backend != "hf":
        extra["engine"] = parallel.backend
    if dp is not None and config.num_fewshot:
        extra["fewshot_ranks"] = dp.world_size
    if not extra:
        return base
    return hashlib.sha256((base + json.dumps(extra, sort_keys=True)).encode()).hexdigest()


def follow(dp: DataParallel, config: RunConfig, spec: Any, plans: list[Any], chat: bool, budget: Any,
           quantization: str | None) -> Any:
    """A non-zero rank's whole run: the same model, the same evaluations as rank 0, in the same order; nothing
    stored, nothing printed. lm-eval returns None here: rank 0 holds the gathered results."""
    from harness.models import load_model
    from harness.runner import RunResult, _task_manager, evaluate_task, make_lm

    todo = set(dp.share_todo(None))
    if todo:
        model, tokenizer = load_model(spec, dp.device, budget.compute_dtype if budget else config.dtype, quantization)
        first = next(p for p in plans if p.info.name in todo)
        batch = str(budget.batch_sizes[first.info.name]) if budget and config.batch_size == "auto" \
            else config.batch_size
        lm = dp.attach(make_lm(model, tokenizer, batch, dp.device, decode=config.decode))
        task_manager = _task_manager(config, plans, chat)
        for plan in plans:
            if plan.info.name not in todo:
                continue
            if budget and config.batch_size == "auto":
                lm.batch_size_per_gpu = budget.batch_sizes[plan.info.name]
            evaluate_task(lm, plan, config, chat, task_manager, dp.device)
    return RunResult(run_id=None, model=spec.name, adapter=spec.adapter_path, hardware=config.hardware,
                     status="follower")


# ---------------------------------------------------------------------------------------------------------------
# Model parallel and vLLM: lm-eval loads the model
# ---------------------------------------------------------------------------------------------------------------

def load_lm(spec: Any, device: str, dtype: str, batch_size: str, parallel: ParallelConfig,
            config: RunConfig) -> tuple[Any, int | None]:
    """(lm, parameter count) for --parallelize or --backend vllm."""
    if parallel.backend == "vllm":
        return _vllm_lm(spec, dtype, batch_size, parallel, config), _checkpoint_params(spec)
    return _model_parallel_lm(spec, device, dtype, batch_size, config.decode)


def _model_parallel_lm(spec: Any, device: str, dtype: str, batch_size: str, decode: str) -> tuple[Any, int]:
    """lm-eval's HFLM with parallelize=True: accelerate's device_map="auto" puts consecutive layers on consecutive
    visible GPUs (spilling to CPU memory only when they are full)."""
    from transformers import AutoTokenizer

    from harness.models import count_parameters, resolve_dtype
    from harness.runner import make_lm

    torch_dtype = resolve_dtype(dtype, device)
    adapter_tokenizer = spec.adapter_path and (Path(spec.adapter_path) / "tokenizer_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(spec.adapter_path if adapter_tokenizer else spec.load_path,
                                              trust_remote_code=spec.trust_remote_code)
    kwargs: dict[str, Any] = {"parallelize": True, "dtype": str(torch_dtype).replace("torch.", ""),
                              "trust_remote_code": spec.trust_remote_code, "peft": spec.adapter_path,
                              "offload_folder": str(Path(tempfile.gettempdir()) / "kobench-offload")}
    if spec.revision and spec.source.startswith("hf:") and not Path(spec.load_path).exists():
        kwargs["revision"] = spec.revision
    try:
        lm = make_lm(spec.load_path, tokenizer, batch_size, "cuda" if device.startswith("cuda") else device,
                     decode=decode, **kwargs)
    except OSError as exc:
        raise KobenchError(f"--model {spec.name}: cannot load weights from {spec.load_path} "
                           f"({str(exc).splitlines()[0]}). Check the directory or pass --online for a hub id") from None
    return lm, count_parameters(lm.model)


def _checkpoint_params(spec: Any) -> int | None:
    from harness import hardware

    counts = hardware.params_from_safetensors(Path(spec.load_path)) if Path(spec.load_path).is_dir() else None
    return counts.total if counts else None


def _vllm_lm(spec: Any, dtype: str, batch_size: str, parallel: ParallelConfig, config: RunConfig) -> Any:
    """lm-eval's vLLM model with kobench's token and time counters, tensor-parallel over `parallel.tensor_parallel`
    GPUs. An adapter is served as a vLLM LoRA."""
    import time as _time

    from lm_eval.models.vllm_causallms import VLLM

    class KobenchVLLM(VLLM):
        kobench_vllm = True

        def reset_counters(self) -> None:
            self.counters = {"prompt_tokens": 0, "gen_tokens": 0, "prompt_s": 0.0, "gen_s": 0.0}

        def loglikelihood(self, requests, disable_tqdm: bool = False):  # noqa: ANN001, ANN201
            start = _time.perf_counter()
            out = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
            self.counters["prompt_s"] += _time.perf_counter() - start
            self.counters["prompt_tokens"] += sum(len(self.tok_encode(r.args[0] + r.args[1])) for r in requests)
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):  # noqa: ANN001, ANN201
            start = _time.perf_counter()
            out = super().generate_until(requests, disable_tqdm=disable_tqdm)
            self.counters["gen_s"] += _time.perf_counter() - start
            self.counters["prompt_tokens"] += sum(len(self.tok_encode(r.args[0])) for r in requests)
            self.counters["gen_tokens"] += sum(len(self.tok_encode(text)) for text in out)
            return out

    lm = KobenchVLLM(**vllm_kwargs(spec, dtype, batch_size, parallel, config))
    lm.batch_size_per_gpu = batch_size
    lm.reset_counters()
    return lm


def vllm_kwargs(spec: Any, dtype: str, batch_size: str, parallel: ParallelConfig, config: RunConfig) -> dict[str, Any]:
    """The arguments of lm-eval's VLLM model for a kobench model spec (testable without vLLM)."""
    names = {"auto": "auto", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
             "fp32": "float32", "float32": "float32"}
    if dtype not in names:
        raise KobenchError(f"--dtype {dtype}: unknown; use auto, bf16, fp16 or fp32")
    kwargs: dict[str, Any] = {"pretrained": spec.load_path, "dtype": names[dtype],
                              "tensor_parallel_size": parallel.tensor_parallel, "batch_size": batch_size,
                              "seed": config.seed, "trust_remote_code": spec.trust_remote_code}
    if spec.revision and spec.source.startswith("hf:") and not Path(spec.load_path).exists():
        kwargs["revision"] = spec.revision
    if spec.adapter_path:
        adapter = Path(spec.adapter_path)
        kwargs["lora_local_path"] = str(adapter)
        rank = json.loads((adapter / "adapter_config.json").read_text()).get("r", 16)
        kwargs["max_lora_rank"] = max(16, int(rank))  # vLLM's LoRA slots come in fixed sizes; 16 is the smallest
        if (adapter / "tokenizer_config.json").exists():
            kwargs["tokenizer"] = str(adapter)
    return kwargs


# ---------------------------------------------------------------------------------------------------------------
# Screening on several GPUs: one process per candidate, placed on free GPUs
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class GpuJob:
    """One screening candidate: the `kobench run` flags, how many GPUs it takes, and what became of it."""

    label: str
    argv: list[str]
    gpus_needed: int = 1
    gpus: list[str] = field(default_factory=list)
    returncode: int | None = None
    result: dict[str, Any] | None = None
    log_dir: Path | None = None
    started: float | None = None
    ended: float | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result is not None


def parse_gpus(value: str) -> list[str]:
    """`--gpus 0,1,3` or `--gpus all` (every CUDA device torch sees) as a list of indices."""
    if value.strip() == "all":
        import torch

        count = torch.cuda.device_count()
        if not count:
            raise KobenchError("--gpus all: no CUDA device is visible. Name the GPUs (--gpus 0,1) or drop --gpus")
        return [str(i) for i in range(count)]
    gpus = [part.strip() for part in value.split(",") if part.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise KobenchError(f"--gpus {value}: expected GPU indices such as 0,1,2 (or 'all')")
    if len(set(gpus)) != len(gpus):
        raise KobenchError(f"--gpus {value}: a GPU is listed twice")
    return gpus


def physical_gpus(indices: list[str]) -> list[str]:
    """GPU indices as CUDA_VISIBLE_DEVICES values: when this process already sees a subset (CUDA_VISIBLE_DEVICES
    set), index i means the i-th GPU of that subset."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return list(indices)
    out = []
    for index in indices:
        if int(index) >= len(visible):
            raise KobenchError(f"--gpus {','.join(indices)}: GPU {index} is not among the "
                               f"{len(visible)} visible ones (CUDA_VISIBLE_DEVICES={','.join(visible)})")
        out.append(visible[int(index)])
    return out


def place_jobs(jobs: list[GpuJob], gpus: list[str], start: Callable[[GpuJob], Any],
               finish: Callable[[GpuJob, Any], None] | None = None,
               on_event: Callable[[str, GpuJob], None] | None = None, poll_s: float = 0.2) -> list[GpuJob]:
    """Run every job on GPUs from `gpus`, each GPU given to one job at a time. Jobs start in list order as soon
    as enough GPUs are free (a later, smaller job may start while an earlier one waits for more GPUs).

    `start(job)` starts a job on `job.gpus` and returns a handle with .poll() (a Popen); `finish(job, handle)`
    collects its outcome."""
    too_big = [j for j in jobs if j.gpus_needed > len(gpus)]
    if too_big:
        raise KobenchError(f"{too_big[0].label}: needs {too_big[0].gpus_needed} GPUs, --gpus lists {len(gpus)}")
    free = list(gpus)
    waiting = list(jobs)
    running: list[tuple[GpuJob, Any]] = []
    while waiting or running:
        for job in list(waiting):
            if job.gpus_needed <= len(free):
                job.gpus, free = free[:job.gpus_needed], free[job.gpus_needed:]
                job.started = time.monotonic()
                running.append((job, start(job)))
                waiting.remove(job)
                if on_event:
                    on_event("started", job)
        still = []
        for job, handle in running:
            code = handle.poll()
            if code is None:
                still.append((job, handle))
                continue
            job.returncode, job.ended = code, time.monotonic()
            if finish:
                finish(job, handle)
            free = sorted(free + job.gpus, key=gpus.index)
            if on_event:
                on_event("finished", job)
        if len(still) == len(running):
            time.sleep(poll_s)
        running = still
    return jobs


def screening_jobs(configs: list[RunConfig], parallels: list[ParallelConfig], needs: list[int]) -> list[GpuJob]:
    """One job per candidate, taking `needs[i]` GPUs (data or model parallel over them when more than one)."""
    jobs = []
    for config, parallel, needed in zip(configs, parallels, needs, strict=True):
        label = config.model + (f" + {config.adapter}" if config.adapter else "")
        jobs.append(GpuJob(label=label, argv=run_argv(config, parallel, as_json=True), gpus_needed=needed))
    return jobs


def screen_on_gpus(configs: list[RunConfig], parallels: list[ParallelConfig], needs: list[int], gpus: list[str],
                   on_event: Callable[[str, GpuJob], None] | None = None,
                   log_root: Path | None = None) -> list[GpuJob]:
    """Run every candidate as its own `kobench run` process on free GPUs; each writes to the shared store.
    Output of each process goes to LOG_ROOT/NN/{stdout,stderr}.log; its JSON result is read back."""
    log_root = log_root or Path(tempfile.mkdtemp(prefix="kobench-screen-"))
    jobs = screening_jobs(configs, parallels, needs)
    for i, job in enumerate(jobs, start=1):
        job.log_dir = log_root / f"{i:02d}"
        job.log_dir.mkdir(parents=True, exist_ok=True)

    def start(job: GpuJob) -> subprocess.Popen[bytes]:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(physical_gpus(job.gpus))}
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            env.pop(var, None)
        with open(job.log_dir / "stdout.log", "wb") as out, open(job.log_dir / "stderr.log", "wb") as err:
            return subprocess.Popen([sys.executable, "-m", "harness", "run", *job.argv], stdout=out, stderr=err,
                                    env=env)

    def finish(job: GpuJob, _handle: Any) -> None:
        lines = (job.log_dir / "stdout.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        for line in reversed(lines):
            try:
                job.result = json.loads(line)
                break
            except json.JSONDecodeError:
                continue

    return place_jobs(jobs, gpus, start, finish, on_event)


def log_tail(job: GpuJob, lines: int = 5) -> str:
    """The last lines a failed screening process wrote to stderr (its `error: ...` line, usually)."""
    if job.log_dir is None or not (job.log_dir / "stderr.log").exists():
        return ""
    text = (job.log_dir / "stderr.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])
