"""kobench's generation path (harness/fastgen.py): same outputs as stock lm-eval, memory-sized length buckets,
out-of-memory retry."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from harness import fastgen
from harness.fastgen import SequenceCost, batch_size_for, length_order

from conftest import KOREAN_LINES

# Two gen_kwargs groups, as two tasks would send them. The tiny model writes "듑" often, so that stop sequence
# fires in the middle of some generations; "\n\n" is lm-eval's default.
GROUPS = [{"until": ["듑", "\n\n"], "max_gen_toks": 10, "do_sample": False},
          {"until": ["다."], "max_gen_toks": 6, "do_sample": False}]


def make_requests(count: int = 12, seed: int = 0) -> list[Any]:
    """`count` generate_until requests of 1-9 sentences (mixed prompt lengths), alternating the two groups."""
    from lm_eval.api.instance import Instance

    rng = random.Random(seed)
    requests = []
    for i in range(count):
        context = " ".join(rng.choice(KOREAN_LINES) for _ in range(rng.randint(1, 9)))
        requests.append(Instance(request_type="generate_until", doc={}, arguments=(context, dict(GROUPS[i % 2])),
                                 idx=0))
    return requests


@pytest.fixture(scope="module")
def stock_outputs(tiny_model: Path) -> list[str]:
    """Stock lm-eval, batch size 1, fp32 on the CPU: the reference every fast-path output must equal."""
    from lm_eval.models.huggingface import HFLM

    stock = HFLM(pretrained=str(tiny_model), batch_size=1, device="cpu", dtype="float32")
    return stock.generate_until(make_requests(), disable_tqdm=True)


@pytest.fixture(scope="module")
def kobench_lm(tiny_model: Path) -> Any:
    """The runner's KobenchLM around the tiny model (fp32), batch size 8 as on a CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.runner import make_lm

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype="float32").eval()
    return make_lm(model, AutoTokenizer.from_pretrained(tiny_model), "8", "cpu")


def test_kobench_lm_matches_stock_item_by_item(kobench_lm: Any, stock_outputs: list[str]) -> None:
    kobench_lm.reset_counters()
    outputs = kobench_lm.generate_until(make_requests(), disable_tqdm=True)
    assert outputs == stock_outputs
    # 6 requests per group in buckets of at most 8: one bucket per group
    assert [b.batch for b in kobench_lm.generation_buckets] == [6, 6]
    # the stop sequences really cut generations: without them some outputs are longer
    no_stop = make_requests()
    for request in no_stop:
        request.args[1]["until"] = ["@@@"]
    assert sum(a != b for a, b in zip(kobench_lm.generate_until(no_stop, disable_tqdm=True), outputs)) >= 2


def test_memory_sized_buckets_match_stock(kobench_lm: Any, stock_outputs: list[str]) -> None:
    requests = make_requests()
    cost = fastgen.sequence_cost(kobench_lm.model)
    # memory for 3 sequences of the longest prompt of the first group: its first bucket has 3 rows, later ones
    # (shorter prompts) more, never more than the batch size 8
    lengths = [len(kobench_lm.tok_encode(r.args[0])) for r in requests[::2]]
    free = int(3.5 * cost.bytes_for(max(lengths), 10) / fastgen.MEMORY_SHARE)
    outputs, buckets = fastgen.generate_until(kobench_lm, requests, disable_tqdm=True, free_bytes=lambda: free)
    assert outputs == stock_outputs
    assert buckets[0].batch == 3 and buckets[1].batch == 3  # the first group's 6 requests
    assert all(b.batch <= 8 for b in buckets) and sum(b.batch for b in buckets) == len(requests)
    assert buckets[0].prompt_tokens >= buckets[1].prompt_tokens  # longest first within a group


def test_out_of_memory_halves_the_bucket_and_retries(kobench_lm: Any, stock_outputs: list[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    real = kobench_lm._model_generate
    calls: list[int] = []

    def flaky_generate(context: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(context.shape[0])
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(context, *args, **kwargs)

    monkeypatch.setattr(kobench_lm, "_model_generate", flaky_generate)
    outputs, buckets = fastgen.generate_until(kobench_lm, make_requests(), disable_tqdm=True)
    assert outputs == stock_outputs
    # 6 rows fail once, then 3 + 3; the ceiling stays at 3 for the rest of that group; the next group starts at 8
    assert calls == [6, 3, 3, 6]
    assert [(b.batch, b.oom_retries) for b in buckets] == [(3, 1), (3, 0), (6, 0)]


def test_out_of_memory_at_batch_one_is_raised(kobench_lm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(kobench_lm, "_model_generate", no_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        fastgen.generate_until(kobench_lm, make_requests(2), disable_tqdm=True)


def test_other_errors_are_not_retried(kobench_lm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def broken(context: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(context.shape[0])
        raise ValueError("not a memory problem")

    monkeypatch.setattr(kobench_lm, "_model_generate", broken)
    with pytest.raises(ValueError, match="not a memory problem"):
        fastgen.generate_until(kobench_lm, make_requests(4), disable_tqdm=True)
    assert calls == [2]


def test_sequence_cost_of_the_tiny_model(kobench_lm: Any) -> None:
    cost = fastgen.sequence_cost(kobench_lm.model)
    # tiny Llama: 2 layers, 2 KV heads, head_dim 32/4 = 8, fp32 -> 2 x 2 x 2 x 8 x 4 = 256 bytes a token;
    # prefill working set (4 x hidden 32 + 3 x intermediate 64) x 4 bytes = 320 x 4 = 1280 bytes a prompt token
    assert cost == SequenceCost(kv_bytes_per_token=256, prefill_bytes_per_token=1280)


def test_sequence_cost_of_the_exaone_shape() -> None:
    import torch
    from transformers import LlamaConfig

    class Shape:  # the model's config and dtype are all sequence_cost reads
        config = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             intermediate_size=14336, vocab_size=102400)
        dtype = torch.bfloat16

    cost = fastgen.sequence_cost(Shape())
    # 2 x 32 layers x 8 KV heads x 128 head_dim x 2 bytes = 131072 bytes (128 KiB) a token
    assert cost.kv_bytes_per_token == 131072
    # (4 x 4096 + 3 x 14336) x 2 = (16384 + 43008) x 2 = 118784
    assert cost.prefill_bytes_per_token == 118784


def test_batch_size_arithmetic() -> None:
    cost = SequenceCost(kv_bytes_per_token=256, prefill_bytes_per_token=1280)
    # prompt 10 + 5 new: 256 x 15 + 1280 x 10 + 10 x 10 = 3840 + 12800 + 100 = 16740 bytes a sequence
    assert cost.bytes_for(10, 5) == 16740
    # 0.9 x 100000 = 90000 usable; 90000 // 16740 = 5
    assert batch_size_for(100_000, cost, 10, 5, cap=64) == 5
    assert batch_size_for(100_000, cost, 10, 5, cap=4) == 4
    assert batch_size_for(1_000, cost, 10, 5, cap=64) == 1  # never 0: an out-of-memory error halves it instead
    # EXAONE-3.5-7.8B in bf16 on a 24 GB card: 6 GiB left after the weights, prompts of 1000 tokens + 256 new:
    # 131072 x 1256 + 118784 x 1000 + 1000^2 = 164626432 + 118784000 + 1000000 = 284410432 bytes a sequence;
    # 0.9 x 6 GiB = 5798205849 (rounded down) -> 5798205849 // 284410432 = 20
    exaone = SequenceCost(kv_bytes_per_token=131072, prefill_bytes_per_token=118784)
    assert batch_size_for(6 * 2**30, exaone, 1000, 256, cap=64) == 20


def test_length_order_is_lm_evals() -> None:
    # longest first; equal lengths by context text, as HFLM.generate_until's sort key (-len(tokens), context)
    assert length_order([3, 7, 7, 1], ["c", "b", "a", "d"]) == [2, 1, 0, 3]


def test_free_cuda_bytes_honours_the_process_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from harness import hardware

    gib = 2**30
    monkeypatch.setattr(hardware, "cuda_index", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: 2 * gib)
    fraction = {"value": 1.0}
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda index: fraction["value"])
    # card free 10 + torch's cached-but-unused 3 - 2 = 11 GiB
    assert fastgen.free_cuda_bytes("cuda:0") == 11 * gib
    # a profile capped the process at 0.1 x 80 = 8 GiB, 2 of them allocated: 6 GiB left
    fraction["value"] = 0.1
    assert fastgen.free_cuda_bytes("cuda:0") == 6 * gib


def test_summarize_counts_decode_steps() -> None:
    stats = [fastgen.BucketStats(batch=4, prompt_tokens=50, new_tokens=11, prefill_s=0.5, decode_s=1.0),
             fastgen.BucketStats(batch=8, prompt_tokens=20, new_tokens=6, prefill_s=0.25, decode_s=1.0)]
    summary = fastgen.summarize(stats)
    # the first new token comes from the prefill: 10 + 5 = 15 decode steps in 2.0 s
    assert summary["decode_steps"] == 15
    assert summary["decode_s_per_step"] == pytest.approx(2.0 / 15)
    assert summary["batch_sizes"] == [4, 8] and summary["prefill_s"] == 0.75


def test_unreadable_shape_falls_back_to_fixed_buckets(kobench_lm: Any, stock_outputs: list[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.errors import KobenchError

    def unreadable(model: Any) -> SequenceCost:
        raise KobenchError("model config has no hidden_size")

    monkeypatch.setattr(fastgen, "sequence_cost", unreadable)
    # memory is measured, but without the shape it cannot size buckets: the batch size (8) caps them
    outputs, buckets = fastgen.generate_until(kobench_lm, make_requests(), disable_tqdm=True, free_bytes=lambda: 1)
    assert outputs == stock_outputs
    assert [b.batch for b in buckets] == [6, 6]


# --- the static-cache decode loop (harness/staticdecode.py); on a GPU the same loop is replayed as a CUDA graph ---

def _static_lm(model_dir: Path, attention: str = "sdpa") -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.runner import make_lm

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", attn_implementation=attention).eval()
    return make_lm(model, AutoTokenizer.from_pretrained(model_dir), "8", "cpu", decode="static")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # a boolean 4D mask and an additive one
def test_static_decode_matches_stock_item_by_item(tiny_model: Path, kobench_lm: Any, stock_outputs: list[str],
                                                  attention: str) -> None:
    lm = _static_lm(tiny_model, attention)
    outputs, buckets = fastgen.generate_until(lm, make_requests(), disable_tqdm=True)
    assert outputs == stock_outputs
    assert [b.decode for b in buckets] == ["static", "static"]
    # the loop stops where generate stops: the same number of new tokens in every bucket
    _, generated = fastgen.generate_until(kobench_lm, make_requests(), disable_tqdm=True)
    assert [b.new_tokens for b in buckets] == [b.new_tokens for b in generated]


def test_static_decode_pads_after_eos_as_generate_does(tiny_model: Path) -> None:
    """Rows that emit an EOS of the generation config finish early (pad from then on); the batch goes on."""
    from collections import Counter

    from lm_eval.models.huggingface import HFLM

    lm = _static_lm(tiny_model)
    requests = make_requests()
    for request in requests:
        request.args[1]["until"] = ["@@@"]  # no stop sequence: only EOS and max_gen_toks end a row
    # the token the tiny model writes most often becomes its EOS, so some rows end early and others not
    lm.kobench_decode = "generate"
    plain = fastgen.generate_until(lm, requests, disable_tqdm=True)[0]
    context, mask = lm.tok_batch_encode([r.args[0] for r in requests])
    written = lm.model.generate(input_ids=context, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)[:, context.shape[1]:]
    lm.model.generation_config.eos_token_id = Counter(written.flatten().tolist()).most_common(1)[0][0]
    stock = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=1, device="cpu")
    expected = stock.generate_until(requests, disable_tqdm=True)
    lm.kobench_decode = "static"
    outputs, buckets = fastgen.generate_until(lm, requests, disable_tqdm=True)
    assert outputs == expected
    assert sum(len(a) < len(b) for a, b in zip(expected, plain)) >= 2  # EOS did end rows early
    assert all(b.decode == "static" for b in buckets)


def test_decode_path_choice(tiny_model: Path, kobench_lm: Any) -> None:
    lm = _static_lm(tiny_model)
    greedy = {"do_sample": False}
    assert fastgen.decode_path(lm, greedy) == "static"
    assert fastgen.decode_path(lm, {"do_sample": True, "temperature": 0.7}) == "generate"
    assert fastgen.decode_path(lm, {"num_beams": 4}) == "generate"
    lm.model.hf_device_map = {"model.layers.0": 0, "model.layers.1": 1}  # --parallelize over two GPUs
    assert fastgen.decode_path(lm, greedy) == "generate"
    assert "model.generate: the model is split over several devices" in lm.kobench_decode_notes
    del lm.model.hf_device_map
    lm.model.generation_config.repetition_penalty = 1.3
    assert fastgen.decode_path(lm, greedy) == "generate"
    assert "model.generate: generation_config.repetition_penalty=1.3" in lm.kobench_decode_notes
    # auto: CUDA graphs on a CUDA device only; asking for graphs on a CPU notes why it used generate
    assert kobench_lm.kobench_decode == "auto" and fastgen.decode_path(kobench_lm, greedy) == "generate"
    kobench_lm.kobench_decode = "graph"
    try:
        assert fastgen.decode_path(kobench_lm, greedy) == "generate"
        assert "model.generate: CUDA graphs need a CUDA device" in kobench_lm.kobench_decode_notes
    finally:
        kobench_lm.kobench_decode = "auto"


def test_decode_flag_is_checked_and_travels_to_other_processes() -> None:
    from harness.config import RunConfig
    from harness.errors import KobenchError
    from harness.multigpu import run_argv

    with pytest.raises(KobenchError, match="--decode fast: use auto, graph, compiled or generate"):
        RunConfig(model="m", tasks=["ko_legal_mcq"], decode="fast").validate()
    assert set(fastgen.DECODE_MODES) == {"auto", "graph", "compiled", "generate"}
    argv = run_argv(RunConfig(model="m", decode="compiled"))
    assert argv[argv.index("--decode") + 1] == "compiled"
    assert "--decode" not in run_argv(RunConfig(model="m"))  # the default is not written out
