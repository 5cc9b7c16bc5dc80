"""Multi-GPU pieces that run without GPUs: flag checks, command construction, rank handling, the "only rank 0
writes" rule (a real two-process data-parallel run over gloo), model parallel through lm-eval, and the screening
scheduler (fake GPU lists; the tiny model in CPU processes)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from harness import multigpu
from harness.cli.run import build_config, candidate_parallel, load_candidates
from harness.config import RunConfig
from harness.errors import KobenchError
from harness.multigpu import DataParallel, GpuJob, ParallelConfig
from harness.runner import run
from harness.store import open_store
from harness.store.schema import Run, Sample, TaskResult
from tests.conftest import REPO, kobench, last_json_line

TASKS = ["ko_fixture_mc", "ko_fixture_gen"]
ITEMS = 6 + 4  # the fixture tasks' items


# --- flags ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("parallel,config_changes,needle", [
    (ParallelConfig(num_gpus=0), {}, "--num-gpus 0: must be 1 or more"),
    (ParallelConfig(tensor_parallel=2), {}, "tensor parallelism needs --backend vllm"),
    (ParallelConfig(backend="tgi"), {}, "--backend tgi: use hf or vllm"),
    (ParallelConfig(num_gpus=2, parallelize=True), {}, "data parallel runs one model copy per GPU"),
    (ParallelConfig(num_gpus=2), {"device": "cuda:1"}, "pick the GPUs with CUDA_VISIBLE_DEVICES"),
    (ParallelConfig(parallelize=True), {"hardware": "rtx4090-24gb"}, "a hardware profile describes one card"),
    (ParallelConfig(parallelize=True), {"quantize": "nf4"}, "--quantize nf4 with --parallelize: not supported"),
])
def test_impossible_combinations_are_refused(parallel: ParallelConfig, config_changes: dict[str, str],
                                             needle: str) -> None:
    config = dataclasses.replace(RunConfig(model="m", tasks=TASKS), **config_changes)
    with pytest.raises(KobenchError, match=needle.replace("(", r"\(")):
        parallel.validate(config)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_is_a_clear_error(tiny_model: Path, fixture_tasks: Path, db_path: Path) -> None:
    proc = kobench("run", "--model", str(tiny_model), "--tasks", "ko_fixture_mc", "--db", str(db_path),
                   "--backend", "vllm", "--tensor-parallel", "2")
    assert proc.returncode == 2
    assert "error: --backend vllm: vLLM is not installed" in proc.stderr and "Traceback" not in proc.stderr
    assert not db_path.exists()  # refused before the store is touched


def test_vllm_arguments_for_a_model_with_adapter(tiny_model: Path, tiny_adapter: Path) -> None:
    from harness.models import resolve_model

    spec = resolve_model(str(tiny_model), str(tiny_adapter))
    kwargs = multigpu.vllm_kwargs(spec, "bf16", "auto", ParallelConfig(backend="vllm", tensor_parallel=2),
                                  RunConfig(model=str(tiny_model), seed=7))
    assert kwargs == {"pretrained": str(tiny_model), "dtype": "bfloat16", "tensor_parallel_size": 2,
                      "batch_size": "auto", "seed": 7, "trust_remote_code": False,
                      "lora_local_path": str(tiny_adapter.resolve()), "max_lora_rank": 16}  # the adapter has r=4


# --- command construction ---------------------------------------------------------------------------------------

def _parse_run_flags(argv: list[str]) -> tuple[RunConfig, dict[str, Any]]:
    """argv through the real `kobench run` option parser, then the CLI's own build_config."""
    import inspect

    from typer.main import get_command

    from harness.cli import _register, app

    _register()
    params = get_command(app).commands["run"].make_context("run", list(argv)).params
    names = inspect.signature(build_config).parameters
    return build_config(**{k: params[k] for k in names}), params


def test_run_flags_rebuild_every_config_field(tmp_path: Path) -> None:
    data = tmp_path / "mc.jsonl"
    data.write_text("{}\n")
    config = RunConfig(model="m", adapter="/a", tasks=["t1", "t2"], limit=3, hardware="rtx4090-24gb",
                       quantize="nf4", profiles=["/p.yaml"], db=str(tmp_path / "r.db"), data={"t1": str(data)},
                       categories=["c1", "c 2"], device="cpu", batch_size="4", num_fewshot=2,
                       chat_template="off", force=True, online=True, trust_remote_code=True, seed=7, refined=True)
    parallel = ParallelConfig(num_gpus=2)
    argv = multigpu.run_argv(config, parallel, as_json=True)
    rebuilt, params = _parse_run_flags(argv)
    assert rebuilt.to_dict() == {**config.to_dict(), "db": f"sqlite:///{tmp_path / 'r.db'}"}
    assert params["num_gpus"] == 2 and params["as_json"] is True
    # every field either has a flag or is one of the two the CLI does not expose
    flagged = set(multigpu._SCALAR_FLAGS) | set(multigpu._BOOL_FLAGS) | multigpu._LIST_FLAGS
    assert {f.name for f in dataclasses.fields(RunConfig)} - flagged == {"dtype", "bootstrap_iters"}


def test_suite_runs_pass_the_suite_not_its_tasks() -> None:
    config = RunConfig(model="m", suite="quick", tasks=["a", "b"])  # as config.validate() leaves it
    argv = multigpu.run_argv(config)
    assert "--suite" in argv and "--tasks" not in argv


def test_a_field_without_a_flag_cannot_be_sent() -> None:
    with pytest.raises(KobenchError, match="dtype='bf16': has no `kobench run` flag"):
        multigpu.run_argv(RunConfig(model="m", dtype="bf16"))


def test_launch_command_is_accelerate_launch_of_harness_run() -> None:
    command = multigpu.launch_command(["--model", "m", "--num-gpus", "4"], 4, 29555)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    joined = " ".join(command)
    assert "--multi_gpu --num_processes 4 --num_machines 1" in joined and "--main_process_port 29555" in joined
    assert command[-7:] == ["-m", "harness", "run", "--model", "m", "--num-gpus", "4"]


# --- ranks ------------------------------------------------------------------------------------------------------

def test_rank_handling_from_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig(model="m", tasks=TASKS, device="cpu")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert DataParallel.from_env(config, ParallelConfig()) is None
    assert multigpu.is_main_process() and multigpu.needs_launch(ParallelConfig(num_gpus=2))
    assert not multigpu.needs_launch(ParallelConfig())

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not multigpu.is_main_process()  # rank 1 prints nothing
    assert not multigpu.needs_launch(ParallelConfig(num_gpus=2))  # already launched: do not launch again
    with pytest.raises(KobenchError, match="launched as one of 2; pass --num-gpus 2"):
        DataParallel.from_env(config, ParallelConfig(num_gpus=4))
    with pytest.raises(KobenchError, match="run in one process"):
        DataParallel.from_env(config, ParallelConfig(parallelize=True))
    assert DataParallel(rank=0, world_size=2, device="cpu").is_writer
    assert not DataParallel(rank=1, world_size=2, device="cpu").is_writer


def test_fingerprints_change_only_where_scores_can() -> None:
    config = RunConfig(model="m")
    dp = DataParallel(rank=0, world_size=2, device="cpu")
    assert multigpu.fingerprint("abc", ParallelConfig(num_gpus=2), dp, config) == "abc"  # zero-shot: same items
    assert multigpu.fingerprint("abc", ParallelConfig(parallelize=True), None, config) == "abc"
    assert multigpu.fingerprint("abc", ParallelConfig(backend="vllm"), None, config) != "abc"
    # lm-eval draws few-shot examples per rank, in document order: other draws than one process
    assert multigpu.fingerprint("abc", ParallelConfig(num_gpus=2), dp, RunConfig(model="m", num_fewshot=2)) != "abc"


def test_oom_retry_only_in_a_single_process() -> None:
    class Lm:
        pass

    lm = Lm()
    assert multigpu.retries_oom(lm)
    DataParallel(rank=0, world_size=2, device="cpu").attach(lm)
    assert not multigpu.retries_oom(lm)  # the other ranks wait in a collective
    assert lm._rank == 0 and lm._world_size == 2


@pytest.mark.slow
def test_data_parallel_on_two_cpu_processes_matches_one(tiny_model: Path, fixture_tasks: Path,
                                                        tmp_path: Path) -> None:
    """`kobench run --num-gpus 2 --device cpu` launches two gloo ranks: the same samples and scores as one process,
    one run in the store written by rank 0 alone, every item once."""
    single = run(RunConfig(model=str(tiny_model), tasks=TASKS, db=str(tmp_path / "one.db"), device="cpu",
                           batch_size="2"))
    dp_db = tmp_path / "dp.db"
    proc = kobench("run", "--model", str(tiny_model), "--tasks", ",".join(TASKS), "--db", str(dp_db),
                   "--device", "cpu", "--batch-size", "2", "--num-gpus", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json_line(proc.stdout)
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 prints, once
    assert result["status"] == "done" and result["scores"] == single.scores

    stores = {name: open_store(path, readonly=True) for name, path in (("one", tmp_path / "one.db"), ("dp", dp_db))}
    rows = {}
    for name, store in stores.items():
        with store.session() as session:
            runs = session.scalars(select(Run)).all()
            rows[name] = session.execute(select(Sample.task, Sample.doc_id, Sample.prompt, Sample.output,
                                                Sample.target, Sample.metrics)
                                         .order_by(Sample.task, Sample.doc_id)).all()
            tokens = session.execute(select(TaskResult.task, TaskResult.prompt_tokens, TaskResult.gen_tokens)
                                     .order_by(TaskResult.task)).all()
            rows[f"{name}_tokens"] = [tuple(t) for t in tokens]
            if name == "dp":
                assert len(runs) == 1 and runs[0].config["parallel"]["world_size"] == 2
        store.dispose()
    assert len(rows["dp"]) == ITEMS and [tuple(r) for r in rows["dp"]] == [tuple(r) for r in rows["one"]]
    assert rows["dp_tokens"] == rows["one_tokens"]  # both ranks' tokens counted


def test_model_parallel_matches_single_device(tiny_model: Path, fixture_tasks: Path, tmp_path: Path) -> None:
    """--parallelize loads through lm-eval (device_map=auto; on a CPU-only host everything lands on the CPU): the
    same outputs as harness's own loader."""
    plain = run(RunConfig(model=str(tiny_model), tasks=["ko_fixture_mc"], db=str(tmp_path / "a.db"), device="cpu",
                          batch_size="2"))
    split = run(RunConfig(model=str(tiny_model), tasks=["ko_fixture_mc"], db=str(tmp_path / "b.db"), device="cpu",
                          batch_size="2"), parallel=ParallelConfig(parallelize=True))
    assert split.status == "done" and split.scores == plain.scores
    outputs = []
    for name in ("a.db", "b.db"):
        store = open_store(tmp_path / name, readonly=True)
        with store.session() as session:
            outputs.append(session.execute(select(Sample.doc_id, Sample.output).order_by(Sample.doc_id)).all())
            if name == "b.db":
                assert session.scalars(select(Run)).one().config["parallel"]["parallelize"] is True
        store.dispose()
    assert outputs[0] == outputs[1]


# --- screening on several GPUs ----------------------------------------------------------------------------------

class FakeProcess:
    """A process that ends `ticks` polls after it started."""

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks

    def poll(self) -> int | None:
        self.ticks -= 1
        return 0 if self.ticks < 0 else None


def test_scheduler_gives_each_gpu_to_one_job_at_a_time() -> None:
    jobs = [GpuJob(label=f"m{i}", argv=[], gpus_needed=need) for i, need in enumerate([1, 1, 2, 1, 3, 1])]
    gpus = ["0", "1", "3"]
    timeline: list[tuple[str, str, tuple[str, ...]]] = []
    busy: set[str] = set()

    def start(job: GpuJob) -> FakeProcess:
        assert not busy & set(job.gpus), f"{job.label} placed on a busy GPU {job.gpus}"
        busy.update(job.gpus)
        return FakeProcess(ticks=2)

    def finish(job: GpuJob, _handle: Any) -> None:
        busy.difference_update(job.gpus)

    multigpu.place_jobs(jobs, gpus, start, finish, lambda e, j: timeline.append((e, j.label, tuple(j.gpus))),
                        poll_s=0)
    assert all(j.returncode == 0 for j in jobs)
    assert [len(j.gpus) for j in jobs] == [1, 1, 2, 1, 3, 1] and all(set(j.gpus) <= set(gpus) for j in jobs)
    # first wave: m0, m1 on GPUs 0 and 1; m2 (2 GPUs) waits, m3 fills GPU 3 meanwhile
    assert timeline[:3] == [("started", "m0", ("0",)), ("started", "m1", ("1",)), ("started", "m3", ("3",))]
    started = [label for event, label, _ in timeline if event == "started"]
    assert sorted(started) == sorted(j.label for j in jobs)


def test_scheduler_refuses_a_job_larger_than_the_gpu_list() -> None:
    with pytest.raises(KobenchError, match="needs 3 GPUs, --gpus lists 2"):
        multigpu.place_jobs([GpuJob(label="big", argv=[], gpus_needed=3)], ["0", "1"], lambda j: FakeProcess(0))


def test_gpu_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    assert multigpu.parse_gpus("0, 1,3") == ["0", "1", "3"]
    for bad in ("", "0,x", "0,0"):
        with pytest.raises(KobenchError, match="--gpus"):
            multigpu.parse_gpus(bad)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert multigpu.physical_gpus(["0", "1"]) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # this process sees a subset: index i is its i-th GPU
    assert multigpu.physical_gpus(["0", "2"]) == ["4", "7"]
    with pytest.raises(KobenchError, match="GPU 3 is not among the 3 visible"):
        multigpu.physical_gpus(["3"])


def test_candidates_may_take_several_gpus(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump([{"model": "a"}, {"model": "b", "gpus": 2},
                                    {"model": "c", "gpus": 2, "parallelize": True}]))
    cands = load_candidates(path)
    assert [candidate_parallel(c) for c in cands] == [
        (ParallelConfig(), 1), (ParallelConfig(num_gpus=2), 2), (ParallelConfig(parallelize=True), 2)]
    with pytest.raises(KobenchError, match="gpus: 0 must be a whole number"):
        candidate_parallel({"model": "x", "gpus": 0})


@pytest.mark.slow
def test_screen_places_candidates_on_gpus_and_gathers_them_in_one_store(tiny_model: Path, other_tiny_model: Path,
                                                                       fixture_tasks: Path, tmp_path: Path) -> None:
    """Three candidates on a fake two-GPU list (CPU processes): two run at once, the third takes the first GPU
    that frees up, and the ranking shows all three from the shared store."""
    db = tmp_path / "screen.db"
    proc = kobench("screen", "--models", f"{tiny_model},{other_tiny_model},{tiny_model}", "--tasks",
                   ",".join(TASKS), "--db", str(db), "--device", "cpu", "--batch-size", "2", "--force",
                   "--gpus", "0,1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[gpu 0]" in proc.stderr and "[gpu 1]" in proc.stderr
    events = re.findall(r"\b(started|done|failed)\b", proc.stderr)
    assert events[:3] == ["started", "started", "done"]  # one per GPU at once; the third waits for a free GPU
    assert events.count("started") == 3 and events.count("done") == 3
    ranking = last_json_line(proc.stdout)
    assert sorted(row["model"] for row in ranking) == ["tiny-llama", "tiny-llama-48"]
    store = open_store(db, readonly=True)
    with store.session() as session:
        runs = session.scalars(select(Run)).all()
        assert len(runs) == 3 and {r.status for r in runs} == {"done"} and len({r.pid for r in runs}) == 3
        assert session.query(Sample).count() == 3 * ITEMS
    store.dispose()


def test_shipped_accelerate_configs_load() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(REPO / "configs" / "accelerate" / "ddp.yaml"))
    fsdp = load_config_from_file(str(REPO / "configs" / "accelerate" / "fsdp_lora.yaml"))
    assert ddp.distributed_type == "MULTI_GPU" and fsdp.distributed_type == "FSDP"
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert json.loads(json.dumps(fsdp.fsdp_config))  # plain data, no python objects
