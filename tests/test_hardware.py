"""Hardware budgets: the estimator's arithmetic, the precision choice, profile files, and the budget_exceeded paths."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from sqlalchemy import select
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from harness import hardware
from harness.config import RunConfig
from harness.errors import KobenchError
from harness.hardware import GIB, ModelDims, TaskShape, estimate_memory, plan_budget
from harness.runner import run
from harness.store import open_store
from harness.store.schema import Run, Score, TaskResult
from tests.conftest import FIXTURE_TASKS, file_digest, kobench, last_json_line

ENV = {"KOBENCH_TASKS_DIR": str(FIXTURE_TASKS)}
MIB = 2**20


def llama_32_3b() -> LlamaConfig:
    return LlamaConfig(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                       num_attention_heads=24, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)


def exaone_35_78b() -> LlamaConfig:
    return LlamaConfig(vocab_size=102400, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                       rope_theta=1_000_000.0)


def meta_param_count(config: LlamaConfig) -> int:
    """The reference: transformers builds the model (on the meta device, no memory) and counts its parameters."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied lm_head once


# ---------------------------------------------------------------------------------------------------------------
# Estimator arithmetic
# ---------------------------------------------------------------------------------------------------------------

def test_llama_32_3b_parameters_bytes_and_kv_cache() -> None:
    dims = ModelDims.from_config(llama_32_3b())
    params = dims.param_counts()
    # embeddings 128256 x 3072 = 394,002,432 (lm_head tied: counted once)
    # per layer: q 3072x3072 + k,v 2 x 3072x1024 + o 3072x3072 = 25,165,824; MLP 3 x 3072x8192 = 75,497,472;
    #            2 RMSNorms 6,144 -> 100,669,440; x 28 layers = 2,818,744,320; final norm 3,072
    assert params.total == 394_002_432 + 2_818_744_320 + 3_072 == 3_212_749_824
    assert params.total == meta_param_count(llama_32_3b())
    assert params.lm_head == 0
    assert params.weight_bytes("bf16") == 2 * 3_212_749_824 == 6_425_499_648  # 5.98 GiB
    # KV cache, batch 8 x 2048 tokens: 2 (k, v) x 28 layers x 8 kv heads x 128 x 2 bytes = 114,688 bytes a token
    assert dims.kv_cache_bytes(tokens=2048, batch=8, act_bytes=2) == 114_688 * 8 * 2048 == 1_879_048_192  # 1.75 GiB


def test_exaone_78b_parameters_at_each_precision() -> None:
    dims = ModelDims.from_config(exaone_35_78b())
    params = dims.param_counts()
    # embeddings and the untied lm_head: 2 x 102400 x 4096 = 838,860,800
    # per layer: attention 2 x 4096x4096 + 2 x 4096x1024 = 41,943,040; MLP 3 x 4096x14336 = 176,160,768 -> x 32
    #            = 6,979,321,856 projection weights; norms 32 x 2 x 4096 + 4096 = 266,240
    assert (params.embedding, params.lm_head, params.linear, params.other) == (
        419_430_400, 419_430_400, 6_979_321_856, 266_240)
    assert params.total == 7_818_448_896 == meta_param_count(exaone_35_78b())
    assert params.weight_bytes("bf16") == 15_636_897_792  # 14.56 GiB
    # int8 quantizes the projections (1 byte); embeddings, lm_head and norms stay 16-bit: 2 x 839,127,040
    assert params.weight_bytes("int8") == 6_979_321_856 + 1_678_254_080 == 8_657_575_936
    # nf4: 0.5 byte + an 8-bit absmax per 64 weights (6,979,321,856 / 64 = 109,051,904) + an fp32 scale per
    # 256 absmax (6,979,321,856 / 16384 x 4 = 1,703,936) = 3,600,416,768, plus the same 16-bit rest
    assert params.weight_bytes("nf4") == 3_489_660_928 + 109_051_904 + 1_703_936 + 1_678_254_080 == 5_278_670_848


def test_estimate_for_generation_and_for_loglikelihood() -> None:
    dims = ModelDims.from_config(exaone_35_78b())
    params = dims.param_counts()
    estimate = estimate_memory(dims, params, TaskShape("gen", 2048, 256, False), "bf16", batch_size=1)
    # KV: 2 x 32 x 8 x 128 x 2 bytes = 131,072 a token x 2304 tokens; working set: 2304 x (4x4096 + 3x14336) x 2
    assert estimate.kv_cache_bytes == 131_072 * 2304 == 301_989_888
    assert estimate.activation_bytes == 2304 * 59_392 * 2 == 273_678_336
    assert estimate.overhead_bytes == 768 * MIB
    assert estimate.total_bytes == 15_636_897_792 + 301_989_888 + 273_678_336 + 805_306_368 == 17_017_872_384

    llama = ModelDims.from_config(llama_32_3b())
    scored = estimate_memory(llama, llama.param_counts(), TaskShape("mc", 1000, 0, True), "bf16", batch_size=4)
    # logits 4 x 1000 x 128256 x 2 = 1,026,048,000; KV 114,688 x 1000 x 4 = 458,752,000; working set
    # 4 x 1000 x (4x3072 + 3x8192) x 2 = 294,912,000. The log_softmax copy is made after the KV cache is freed:
    # activations = max(294,912,000, 1,026,048,000, 2 x 1,026,048,000 - 458,752,000) = 1,593,344,000
    assert scored.kv_cache_bytes == 458_752_000
    assert scored.activation_bytes == 1_593_344_000

    int8 = estimate_memory(dims, params, TaskShape("gen", 2048, 256, False), "int8", batch_size=1)
    # + LLM.int8's int32 matmul output: 2304 x 14336 x 4 = 132,120,576
    assert int8.activation_bytes == 273_678_336 + 132_120_576


def test_params_from_safetensors_match_the_loaded_model(tiny_model: Path) -> None:
    params = hardware.params_from_safetensors(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert params.total == sum(p.numel() for p in model.parameters())
    assert params.embedding == params.lm_head == model.config.vocab_size * model.config.hidden_size  # untied


# ---------------------------------------------------------------------------------------------------------------
# Precision and batch choice per profile
# ---------------------------------------------------------------------------------------------------------------

GENERATE_2K = TaskShape("gen", prompt_tokens=2048, gen_tokens=256, loglikelihood=False, n_requests=1000)


def test_exaone_on_rtx4090_runs_bf16_at_the_largest_batch_that_fits() -> None:
    dims = ModelDims.from_config(exaone_35_78b())
    profile = hardware.get_profile("rtx4090-24gb")
    plan = plan_budget(profile, dims, dims.param_counts(), [GENERATE_2K], quantize="auto")
    # batch 1 needs 17,017,872,384 bytes (15.85 GiB) < 23.99 GiB: bf16. Each sequence adds KV 301,989,888 +
    # working set 273,678,336 = 575,668,224; room = 23.99 GiB - weights - overhead = 9,316,861,197 -> 16.18
    # sequences -> the largest power of two is 16.
    budget = int(23.99 * GIB)
    room = budget - 15_636_897_792 - 805_306_368
    assert room // 575_668_224 == 16
    assert plan.fits and plan.precision == "bf16" and plan.quantization is None
    assert plan.batch_sizes == {"gen": 16}
    assert plan.estimates["gen"].total_bytes == 15_636_897_792 + 805_306_368 + 16 * 575_668_224 <= budget


def test_exaone_on_t4_needs_quantization() -> None:
    dims = ModelDims.from_config(exaone_35_78b())
    params = dims.param_counts()
    t4 = hardware.get_profile("t4-16gb")
    assert t4.full_precision == "fp16"  # no bf16 on a T4
    # fp16 at batch 1: 17,017,872,384 bytes (15.85 GiB) > 15.0 GiB: the weights alone (14.56 GiB) + context do not fit
    no_quant = plan_budget(t4, dims, params, [GENERATE_2K], quantize="none")
    assert not no_quant.fits and no_quant.tried["fp16"].total_bytes == 17_017_872_384
    assert "--quantize auto would load it as int8" in no_quant.summary()
    # int8 at batch 1: 8,657,575,936 + KV 301,989,888 + activations 405,798,912 + 805,306,368 = 10,170,671,104
    # (9.47 GiB) fits, so --quantize auto prefers it to nf4
    auto = plan_budget(t4, dims, params, [GENERATE_2K], quantize="auto")
    assert auto.fits and auto.precision == "int8" and auto.compute_dtype == "fp16"
    assert auto.tried["int8"].total_bytes == 10_170_671_104
    # a 9 GiB card: int8 (9.47 GiB) is too big, nf4 (5,278,670,848 + 301,989,888 + 273,678,336 + 805,306,368 =
    # 6,659,645,440 = 6.20 GiB) fits
    nine = hardware.parse_profiles("test", {"profiles": {"card-9gb": {"kind": "gpu", "vram_gib": 9, "bf16": True}}})[0]
    assert plan_budget(nine, dims, params, [GENERATE_2K], quantize="auto").precision == "nf4"
    assert plan_budget(nine, dims, params, [GENERATE_2K], quantize="auto").tried["nf4"].total_bytes == 6_659_645_440
    # a 4 GiB card: nothing fits; the run stops with every estimate recorded
    four = hardware.parse_profiles("test", {"profiles": {"card-4gb": {"vram_gib": 4}}})[0]
    none_fit = plan_budget(four, dims, params, [GENERATE_2K], quantize="auto")
    assert not none_fit.fits and list(none_fit.tried) == ["bf16", "int8", "nf4"] and none_fit.batch_sizes == {}


def test_llama_3b_fits_t4_in_fp16_and_cpu_profiles_never_quantize() -> None:
    dims = ModelDims.from_config(llama_32_3b())
    params = dims.param_counts()
    # 6,425,499,648 + KV 114,688 x 2304 + working set 2304 x 36,864 x 2 + 805,306,368 = 7,664,916,480 (7.14 GiB)
    plan = plan_budget(hardware.get_profile("t4-16gb"), dims, params, [GENERATE_2K], quantize="auto")
    assert plan.precision == "fp16" and plan.tried["fp16"].total_bytes == 7_664_916_480
    cpu = hardware.parse_profiles("test", {"profiles": {"small-cpu": {"kind": "cpu", "ram_gib": 8}}})[0]
    # fp32: 4 x 3,212,749,824 = 12.0 GiB of weights > 8 GiB, and bitsandbytes needs a GPU: no int8/nf4 to fall to
    cpu_plan = plan_budget(cpu, dims, params, [GENERATE_2K], quantize="auto")
    assert not cpu_plan.fits and list(cpu_plan.tried) == ["fp32"]


def test_fixed_batch_size_is_checked_as_given() -> None:
    dims = ModelDims.from_config(exaone_35_78b())
    plan = plan_budget(hardware.get_profile("rtx4090-24gb"), dims, dims.param_counts(), [GENERATE_2K],
                       batch_size="32")
    # 32 sequences: 16,442,204,160 + 32 x 575,668,224 = 34,863,587,328 (32.5 GiB) > 23.99 GiB
    assert not plan.fits and plan.tried["bf16"].total_bytes == 34_863_587_328


def test_task_shapes_are_measured_from_the_real_requests(tiny_model: Path, fixture_tasks: Path) -> None:
    from lm_eval.tasks import TaskManager

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    manager = TaskManager(include_path=str(fixture_tasks), include_defaults=False)
    shapes = {s.task: s for s in hardware.measure_task_shapes(
        manager, [("ko_fixture_mc", None), ("ko_fixture_gen", None)], tokenizer, max_length=1024)}

    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    mc = [json.loads(line) for line in (fixture_tasks / "ko_fixture" / "mc.jsonl").read_text().splitlines()]
    gen = [json.loads(line) for line in (fixture_tasks / "ko_fixture" / "gen.jsonl").read_text().splitlines()]
    # the task YAMLs: "{{question}}\n정답:" + " " + choice, and "{{question}}\n답:" with max_gen_toks 6; +1 for a BOS
    longest_mc = max(length(f"{d['question']}\n정답:") + length(f" {c}") for d in mc for c in d["choices"]) + 1
    longest_gen = max(length(f"{d['question']}\n답:") for d in gen) + 1
    assert (shapes["ko_fixture_mc"].prompt_tokens, shapes["ko_fixture_mc"].gen_tokens) == (longest_mc, 0)
    assert shapes["ko_fixture_mc"].loglikelihood and shapes["ko_fixture_mc"].n_requests == 3 * len(mc)
    assert (shapes["ko_fixture_gen"].prompt_tokens, shapes["ko_fixture_gen"].gen_tokens) == (longest_gen, 6)
    assert not shapes["ko_fixture_gen"].loglikelihood


# ---------------------------------------------------------------------------------------------------------------
# Profiles files
# ---------------------------------------------------------------------------------------------------------------

def test_builtin_profiles() -> None:
    profiles = hardware.load_profiles()
    for name in ("rtx3090-24gb", "rtx4090-24gb", "l4-24gb", "t4-16gb", "a100-40gb", "a100-80gb", "h100-80gb",
                 "h200-141gb", "cpu"):
        assert name in profiles
    assert not profiles["t4-16gb"].bf16 and profiles["a100-80gb"].bf16
    assert profiles["cpu"].kind == "cpu" and profiles["cpu"].memory_gib > 0  # ram_gib: auto = this machine's RAM


@pytest.mark.parametrize(("text", "expected"), [
    ("profiles:\n  my-gpu:\n    kind: gpu\n    bf16: true\n", "profiles.my-gpu.vram_gib: missing. Fix: add vram_gib"),
    ("profiles:\n  my-gpu:\n    vram_gib: lots\n", "profiles.my-gpu.vram_gib: expected a positive number of GiB"),
    ("profiles:\n  my-gpu:\n    vram_gib: 24\n    fp8: true\n", "profiles.my-gpu.fp8: unknown key"),
    ("profiles:\n  my-gpu:\n    vram_gib: 24\n    bf16: maybe\n", "profiles.my-gpu.bf16: expected true or false"),
    ("profiles:\n  my-cpu:\n    kind: cpu\n    vram_gib: 24\n", "profiles.my-cpu.vram_gib: not used by a cpu profile"),
    ("profiles:\n  t4-16gb:\n    vram_gib: 16\n", "profiles.t4-16gb: name already defined in built-in"),
    ("profiles:\n  My GPU:\n    vram_gib: 16\n", "profiles.My GPU: bad profile name"),
    ("my-gpu:\n  vram_gib: 24\n", "profiles: expected a top-level 'profiles:' mapping"),
    ("profiles:\n\tmy-gpu: {vram_gib: 24}\n", "YAML syntax error at line 2"),  # a tab indent
])
def test_profile_file_errors_name_file_key_and_fix(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KobenchError) as err:
        hardware.load_profiles([path])
    message = str(err.value)
    assert message.startswith(f"profiles file {path}") and expected in message and "Fix:" in message
    assert "\n" not in message


def test_user_profiles_from_flag_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "a.yaml"
    flag.write_text("profiles:\n  lab-a6000:\n    vram_gib: 47.5\n    bf16: true\n    description: RTX A6000\n")
    env = tmp_path / "b.yaml"
    env.write_text("profiles: {pi-cpu: {kind: cpu, ram_gib: 8}}\n")
    monkeypatch.setenv("KOBENCH_PROFILES", str(env))
    profiles = hardware.load_profiles([flag])
    assert profiles["lab-a6000"].budget_bytes == int(47.5 * GIB) and profiles["lab-a6000"].source == str(flag)
    assert profiles["pi-cpu"].full_precision == "fp32"


def test_cli_hardware_lists_profiles_and_rejects_a_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("profiles:\n  lab-a6000:\n    vram_gib: 47.5\n")
    listed = kobench("hardware", "--profiles", str(good), "--json", check=True)
    rows = {r["name"]: r for r in last_json_line(listed.stdout)}
    assert rows["lab-a6000"]["memory_gib"] == 47.5 and rows["t4-16gb"]["full_precision"] == "fp16"

    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  lab-a6000:\n    vram_gb: 47.5\n")
    proc = kobench("hardware", "--profiles", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: profiles file {bad}: profiles.lab-a6000.vram_gb")


def test_cli_run_unknown_profile_says_did_you_mean(tiny_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    proc = kobench("run", "--model", str(tiny_model), "--tasks", "ko_fixture_mc", "--hardware", "rtx4090",
                   "--db", str(db), env=ENV)
    assert proc.returncode == 2
    assert "--hardware rtx4090: unknown hardware profile. Did you mean 'rtx4090-24gb'?" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and file_digest(db) is None  # nothing stored


# ---------------------------------------------------------------------------------------------------------------
# budget_exceeded: before loading, and out of memory at batch size 1 while running
# ---------------------------------------------------------------------------------------------------------------

TINY_PROFILES = "profiles:\n  tiny-gpu:\n    kind: gpu\n    vram_gib: 0.001\n    bf16: true\n"


def test_budget_exceeded_before_loading_is_stored_and_leaves_other_runs_intact(
        tiny_model: Path, fixture_tasks: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(TINY_PROFILES)
    first = run(RunConfig(model=str(tiny_model), tasks=["ko_fixture_mc"], db=str(db), device="cpu",
                          batch_size="2"))
    over = run(RunConfig(model=str(tiny_model), tasks=["ko_fixture_mc", "ko_fixture_gen"], db=str(db),
                         device="cpu", hardware="tiny-gpu", profiles=[str(profiles)]))
    assert first.status == "done" and over.status == "budget_exceeded"
    # 1 MiB budget (0.001 GiB = 1,073,741 bytes) < the 768 MiB CUDA context alone
    assert over.error.startswith("budget exceeded: ") and "more than tiny-gpu's 1.0 MiB" in over.error

    store = open_store(db, readonly=True)
    with store.session() as session:
        row = session.get(Run, over.run_id)
        assert row.status == "budget_exceeded" and row.hardware == "tiny-gpu" and row.error == over.error
        budget = row.config["budget"]
        assert budget["fits"] is False and budget["budget_bytes"] == int(0.001 * GIB)
        assert budget["tried"]["bf16"]["total_bytes"] > budget["budget_bytes"]
        assert session.scalars(select(TaskResult).where(TaskResult.run_id == over.run_id)).all() == []
        kept = session.scalars(select(TaskResult).where(TaskResult.run_id == first.run_id)).all()
        assert [(t.task, t.status) for t in kept] == [("ko_fixture_mc", "done")]
        assert session.scalar(select(Score.value).where(Score.run_id == first.run_id, Score.metric == "acc")) == \
            pytest.approx(first.scores["ko_fixture_mc"]["acc"])
        assert session.get(Run, first.run_id).status == "done"

    from harness.cli.results import ranking_table
    from harness.ranking import ranking

    rows = ranking(store)
    store.dispose()
    assert [r.run_ids for r in rows] == [[first.run_id]]  # the budget_exceeded run is not ranked
    console = Console(record=True, width=200)
    console.print(ranking_table(rows))
    text = console.export_text()
    assert "precision" in text and "fp32" in text  # the tiny model ran unquantized in float32 on the CPU


def test_cli_budget_exceeded_exits_3_and_still_prints_json(tiny_model: Path, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(TINY_PROFILES)
    proc = kobench("run", "--model", str(tiny_model), "--tasks", "ko_fixture_mc", "--hardware", "tiny-gpu",
                   "--db", str(tmp_path / "r.db"), "--device", "cpu", "--json",
                   env={**ENV, "KOBENCH_PROFILES": str(profiles)})
    assert proc.returncode == 3
    out = last_json_line(proc.stdout)
    assert out["status"] == "budget_exceeded" and out["scores"] == {} and out["budget"]["fits"] is False
    assert out["error"].startswith("budget exceeded: ko_fixture_mc needs")


def test_out_of_memory_halves_the_batch_then_ends_the_task_as_budget_exceeded(
        tiny_model: Path, fixture_tasks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lm_eval.models.huggingface import HFLM

    real_model_call = HFLM._model_call

    def forward_fits_only_batch_1(self, inps, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if inps.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_model_call(self, inps, *args, **kwargs)

    def generate_never_fits(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    # test doubles that only raise, at the two calls every lm-eval request reaches the model through
    monkeypatch.setattr(HFLM, "_model_call", forward_fits_only_batch_1)
    monkeypatch.setattr(HFLM, "_model_generate", generate_never_fits)
    db = tmp_path / "r.db"
    result = run(RunConfig(model=str(tiny_model), tasks=["ko_fixture_gen", "ko_fixture_mc"], db=str(db),
                           device="cpu", batch_size="2", hardware="cpu"))
    assert result.status == "budget_exceeded"
    assert result.error == "budget exceeded: ko_fixture_gen ran out of memory at batch size 1"
    assert result.scores["ko_fixture_gen"] == {} and 0.0 <= result.scores["ko_fixture_mc"]["acc"] <= 1.0

    store = open_store(db, readonly=True)
    with store.session() as session:
        assert session.get(Run, result.run_id).status == "budget_exceeded"
        tasks = {t.task: t for t in session.scalars(select(TaskResult).where(TaskResult.run_id == result.run_id))}
        gen, mc = tasks["ko_fixture_gen"], tasks["ko_fixture_mc"]
        assert gen.status == "budget_exceeded" and gen.n is None and gen.scores == []
        assert gen.error.startswith("out of memory at batch size 1 (CUDA out of memory")
        assert gen.details["oom_batch_sizes"] == [2, 1]
        # the next task still ran: out of memory at batch 2, done at batch 1
        assert mc.status == "done" and mc.n == 6 and mc.details["oom_batch_sizes"] == [2]
        assert mc.details["batch_size"] == 1 and mc.details["precision"] == "float32"
        assert mc.details["hardware"] == "cpu" and mc.details["estimate"]["batch_size"] == 2
        assert mc.details["peak_rss_mb"] > 0 and mc.wall_s > 0 and mc.prompt_tokens_per_s > 0
    store.dispose()


def test_bench_script_runs_on_tiny_configs(tmp_path: Path) -> None:
    """bench/hardware_budget.py (a GPU script) in its --tiny CPU mode: builds, quantizes, generates, scores, writes."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run([sys.executable, "bench/hardware_budget.py", "--tiny", "--device", "cpu", "--models",
                           "tiny-tied", "--precisions", "full,nf4"], cwd=REPO,
                          env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "hardware_budget.json").read_text())
    # 1 tiny config x 2 profiles (rtx4090-24gb bf16, t4-16gb fp16) x 2 precisions (+ nf4) x 2 workloads
    assert [(s["profile"], s["precision"], s["workload"]) for s in report["scenarios"]] == [
        (p, q, w) for p, full in (("rtx4090-24gb", "bf16"), ("t4-16gb", "fp16")) for q in (full, "nf4")
        for w in ("generate", "score")]
    assert all(s["fits"] and s["error"] is None for s in report["scenarios"])
    generated = [s["measured"]["generated_tokens"] for s in report["scenarios"] if s["workload"] == "generate"]
    assert generated == [4 * 8] * 4  # batch 4 (--tiny's largest) x 8 new tokens each
