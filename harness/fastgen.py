"""kobench's generation path: lm-eval's generate_until, batched by prompt length and sized from measured memory.

Stock lm-eval (HFLM, batch_size=auto) sizes its generation batch once, with forward passes at the model's full
context length; on long-context models that leaves batch 1 or 2 (lm-eval #3252, #3308) and decoding pays the whole
weight read for one or two tokens a step. Here the requests of one gen_kwargs group are sorted longest first, as
lm-eval sorts them, and cut into buckets as large as the KV cache of (prompt + max_gen_toks) tokens, plus the
prefill working set, allows in the memory left free after the weights. Each bucket is left-padded by lm-eval's own
tok_batch_encode and cut at the stop sequences by lm-eval's own helpers. Its tokens come from harness/staticdecode.py
on a CUDA device (a static KV cache, the decode step replayed as a CUDA graph, generate's greedy loop reproduced) or
from lm-eval's own _model_generate (same stopping criteria, same max_length). Each output is what stock lm-eval
writes for that request, up to the rounding of batched bf16 kernels (docs/performance.md).
"""
from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from harness.errors import KobenchError

# Sizing keeps this share of the free memory, leaving the rest for allocator fragmentation and kernel workspaces.
MEMORY_SHARE = 0.9
# Largest bucket: decode is bound by the weight read until far larger batches, and 64 matches lm-eval's own
# max_batch_size and kobench's budget planner.
MAX_BATCH = 64


@dataclass(frozen=True)
class SequenceCost:
    """Memory one sequence of a bucket needs beyond the weights (bytes)."""

    kv_bytes_per_token: int  # keys + values of every layer: 2 x layers x kv_heads x head_dim x dtype bytes
    prefill_bytes_per_token: int  # one layer's working set while the prompt runs (hardware.py's formula)

    def bytes_for(self, prompt_tokens: int, gen_tokens: int) -> int:
        # + prompt_tokens^2 bytes: the boolean [query x key] attention mask of the padded prefill
        return (self.kv_bytes_per_token * (prompt_tokens + gen_tokens)
                + self.prefill_bytes_per_token * prompt_tokens + prompt_tokens * prompt_tokens)


@dataclass
class BucketStats:
    """One generate call: how big it was and where its time went (prefill = until the first new token)."""

    batch: int
    prompt_tokens: int  # padded prompt length of the bucket
    new_tokens: int  # decode steps taken (the longest row's new tokens)
    prefill_s: float
    decode_s: float
    oom_retries: int = 0
    decode: str = "generate"  # generate (model.generate), graph (static cache, CUDA graph) or static (no graph)
    capture_s: float = 0.0  # recording the CUDA graph (in neither prefill_s nor decode_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sequence_cost(model: Any) -> SequenceCost:
    """The per-sequence memory of `model` from its config and compute dtype."""
    import torch

    from harness.hardware import ModelDims

    dims = ModelDims.from_config(model.config)
    dtype = getattr(model, "dtype", None)
    act = dtype.itemsize if isinstance(dtype, torch.dtype) and dtype.is_floating_point else 2
    return SequenceCost(kv_bytes_per_token=dims.kv_cache_bytes(1, 1, act),
                        prefill_bytes_per_token=(4 * dims.hidden_size + 3 * dims.intermediate_size) * act)


def batch_size_for(free_bytes: int, cost: SequenceCost, prompt_tokens: int, gen_tokens: int, cap: int) -> int:
    """Sequences of this length that fit in MEMORY_SHARE of `free_bytes`; at least 1 (an OOM then halves it)."""
    per_sequence = cost.bytes_for(prompt_tokens, gen_tokens)
    return max(1, min(cap, int(free_bytes * MEMORY_SHARE) // per_sequence))


def free_cuda_bytes(device: str) -> int:
    """What torch can still allocate on this card: the card's free memory plus torch's cached-but-unused blocks,
    held to the per-process fraction when a hardware profile set one (mem_get_info does not know that cap)."""
    import torch

    from harness.hardware import cuda_index

    index = cuda_index(device)
    free, total = torch.cuda.mem_get_info(index)
    allocated = torch.cuda.memory_allocated(index)
    available = free + torch.cuda.memory_reserved(index) - allocated
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = get_fraction(index) if get_fraction else 1.0
    if fraction < 1.0:
        available = min(available, int(total * fraction) - allocated)
    return max(0, available)


def length_order(lengths: list[int], contexts: list[str]) -> list[int]:
    """Request indices longest prompt first, ties by context text: lm-eval's generate_until order."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], contexts[i]))


def generate_until(lm: Any, requests: list[Any], disable_tqdm: bool = False,
                   free_bytes: Callable[[], int | None] | None = None) -> tuple[list[str], list[BucketStats]]:
    """lm-eval's HFLM.generate_until for `lm`, in memory-sized length buckets; returns outputs in request order.

    `free_bytes` reports the memory a bucket may use (default: free_cuda_bytes on CUDA, None = no memory sizing,
    as on a CPU, where the bucket size is lm's batch size)."""
    from tqdm import tqdm

    if lm.backend != "causal":  # encoder-decoder models keep lm-eval's own path
        from lm_eval.models.huggingface import HFLM

        return HFLM.generate_until(lm, requests, disable_tqdm=disable_tqdm), []
    if free_bytes is None:
        device = str(lm.device)
        free_bytes = (lambda: free_cuda_bytes(device)) if device.startswith("cuda") else (lambda: None)
    fixed = lm.batch_size_per_gpu if isinstance(lm.batch_size_per_gpu, int) else None
    try:
        cost: SequenceCost | None = sequence_cost(lm.model)
    except KobenchError:  # a config kobench cannot read the shape of: fixed-size buckets, an OOM halves them
        cost = None
    groups: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
    outputs: list[str | None] = [None] * len(requests)
    stats: list[BucketStats] = []
    pbar = tqdm(total=len(requests), disable=disable_tqdm or lm.rank != 0, desc="Running generate_until requests")
    for indices in groups.values():
        contexts = [requests[i].args[0] for i in indices]
        gen_kwargs = requests[indices[0]].args[1]
        lengths = [len(lm.tok_encode(c)) for c in contexts]
        order = [indices[k] for k in length_order(lengths, contexts)]
        position = 0
        ceiling = fixed or MAX_BATCH  # lowered for the rest of the group after an out-of-memory error
        while position < len(order):
            pending = [requests[i].args[0] for i in order[position:position + ceiling]]
            size = _bucket_size(lm, pending, gen_kwargs, cost, free_bytes(), ceiling)
            oom_retries = 0
            while True:
                try:
                    texts, bucket = _generate_bucket(lm, pending[:size], gen_kwargs)
                    break
                except Exception as exc:  # noqa: BLE001 - anything but out-of-memory is re-raised
                    from harness.hardware import is_out_of_memory

                    if size <= 1 or not is_out_of_memory(exc):
                        raise
                # the exception and the tensors its frames held are gone here, so the cache really empties
                _release_memory(str(lm.device))
                size = ceiling = max(1, size // 2)
                oom_retries += 1
            bucket.oom_retries = oom_retries
            stats.append(bucket)
            for i, text in zip(order[position:position + size], texts, strict=True):
                outputs[i] = text
                lm.cache_hook.add_partial("generate_until", requests[i].args, text)
            position += size
            pbar.update(size)
    pbar.close()
    return [text or "" for text in outputs], stats


def _bucket_size(lm: Any, contexts: list[str], gen_kwargs: dict[str, Any], cost: SequenceCost | None,
                 free: int | None, ceiling: int) -> int:
    """Memory-sized batch for the bucket that starts with contexts[0] (the longest); `ceiling` when unmeasured."""
    if free is None or cost is None:
        return min(ceiling, len(contexts))
    max_gen_toks = _max_gen_toks(lm, gen_kwargs)
    prompt = max(1, min(len(lm.tok_encode(contexts[0])), lm.max_length - max_gen_toks))
    return min(len(contexts), batch_size_for(free, cost, prompt, max_gen_toks, ceiling))


def _max_gen_toks(lm: Any, gen_kwargs: dict[str, Any]) -> int:
    from lm_eval.models.utils import normalize_gen_kwargs

    return int(normalize_gen_kwargs(dict(gen_kwargs), lm.max_gen_toks)["max_gen_toks"])


def _generate_bucket(lm: Any, contexts: list[str], gen_kwargs: dict[str, Any]) -> tuple[list[str], BucketStats]:
    """One batch, line for line what HFLM.generate_until does with a chunk (lm-eval 0.4.13), timed."""
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
    from transformers import LogitsProcessorList

    kwargs = normalize_gen_kwargs(dict(gen_kwargs), lm.max_gen_toks)
    until = handle_stop_sequences(kwargs.pop("until", None), eos=lm.tok_decode(lm.eot_token_id,
                                                                                 skip_special_tokens=False))
    max_gen_toks = kwargs.pop("max_gen_toks")
    if lm.max_length - max_gen_toks <= 0:
        raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for the prompt in the model's maximum "
                         f"length {lm.max_length}; lower max_gen_toks")
    context_enc, attn_masks = lm.tok_batch_encode(contexts, left_truncate_len=lm.max_length - max_gen_toks,
                                                  truncation=lm.truncation)
    context_enc, attn_masks = context_enc.to(lm.device), attn_masks.to(lm.device)
    max_length = kwargs.pop("max_length", context_enc.shape[1] + max_gen_toks)
    path = decode_path(lm, kwargs)
    if path == "generate":
        clock = _FirstTokenClock(str(lm.device))
        start = time.perf_counter()
        cont = lm._model_generate(context=context_enc, attention_mask=attn_masks, stop=until, max_length=max_length,
                                  logits_processor=LogitsProcessorList([clock]), **kwargs)
        cont_toks_list = cont.tolist()  # waits for the GPU
        end = time.perf_counter()
        first = clock.first_at or end
        prefill_s, decode_s, capture_s = first - start, end - first, 0.0
    else:
        from lm_eval.models.utils_hf import stop_sequences_criteria

        from harness.staticdecode import BucketDecode

        decoder = BucketDecode(lm.model, context_enc, attn_masks, max_length,
                               stop_sequences_criteria(lm.tokenizer, until, context_enc.shape[1], len(contexts)),
                               lm.tokenizer.pad_token_id, capture=path == "graph", step_forward=_step_forward(lm))
        cont = decoder.run()
        cont_toks_list = cont.tolist()
        prefill_s, decode_s, capture_s = decoder.prefill_s, decoder.decode_s, decoder.capture_s
        if decoder.capture_error:
            lm.kobench_graph_failed = f"CUDA graph capture failed ({decoder.capture_error}); model.generate from here"
            path = "static"
    prompt_len = context_enc.shape[1]
    texts = [_text_of(lm, cont_toks[prompt_len:], until) for cont_toks in cont_toks_list]
    bucket = BucketStats(batch=len(contexts), prompt_tokens=prompt_len, new_tokens=cont.shape[1] - prompt_len,
                         prefill_s=prefill_s, decode_s=decode_s, decode=path, capture_s=capture_s)
    return texts, bucket


def _text_of(lm: Any, cont_toks: list[int], until: list[str]) -> str:
    """One row's new tokens as HFLM.generate_until turns them into the answer text (think tokens, stops)."""
    from lm_eval.models.utils import postprocess_generated_text

    if isinstance(lm.think_end_token, int):
        marks = [i for i, token in enumerate(cont_toks) if token == lm.think_end_token]
        if marks:
            cont_toks = cont_toks[marks[-1] + 1:]
    text = lm.tok_decode(cont_toks)
    if isinstance(lm.think_end_token, int):
        text = text.lstrip()
    return postprocess_generated_text(generation=text, stop=until, think_end_token=lm.think_end_token
                                      if isinstance(lm.think_end_token, str) else None)


DECODE_MODES = ("auto", "graph", "compiled", "generate")


def _step_forward(lm: Any) -> Any:
    """The decode step's forward: the model's, or under --decode compiled one torch.compile of it per run with
    dynamic shapes (one compile serves every bucket's batch and cache length; Inductor fuses the norms, RoPE and
    SwiGLU that otherwise run as separate small kernels)."""
    if getattr(lm, "kobench_decode", "auto") != "compiled":
        return None
    if getattr(lm, "kobench_compiled_forward", None) is None:
        import torch

        lm.kobench_compiled_forward = torch.compile(lm.model.forward, dynamic=True)
    return lm.kobench_compiled_forward


def decode_path(lm: Any, kwargs: dict[str, Any]) -> str:
    """How a bucket decodes: lm.kobench_decode is auto (graph on a CUDA device, generate elsewhere), graph,
    compiled (graph, the step compiled first), generate, or static (the graph path's loop without capture: tests on
    the CPU). A bucket the static loop cannot reproduce (sampling, sliding windows, ...) uses model.generate, and
    lm.kobench_decode_notes (reset per task) says why; after a failed capture (lm.kobench_graph_failed) the rest of
    the run does."""
    from harness import staticdecode

    mode = getattr(lm, "kobench_decode", "auto")
    on_cuda = str(lm.device).startswith("cuda")
    if mode == "generate" or (mode == "auto" and not on_cuda) or getattr(lm, "kobench_graph_failed", None):
        return "generate"
    reason = staticdecode.blocker(lm, kwargs)
    if reason is None and mode in ("graph", "compiled") and not on_cuda:
        reason = "CUDA graphs need a CUDA device"
    if reason is not None:
        lm.kobench_decode_notes = getattr(lm, "kobench_decode_notes", set()) | {f"model.generate: {reason}"}
        return "generate"
    return "static" if mode == "static" else "graph"


class _FirstTokenClock:
    """A logits processor that changes nothing and notes when the first new token's logits are ready (the end of
    prefill). It synchronizes the GPU once per bucket; generate already waits for it every step."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.first_at: float | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.first_at is None:
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.synchronize(self.device)
            self.first_at = time.perf_counter()
        return scores


def _release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def summarize(stats: list[BucketStats]) -> dict[str, Any]:
    """Totals over buckets: batch sizes used, prefill and decode seconds, decode seconds per step."""
    steps = sum(max(s.new_tokens - 1, 0) for s in stats)
    decode = sum(s.decode_s for s in stats)
    return {"buckets": len(stats), "batch_sizes": [s.batch for s in stats],
            "prefill_s": round(sum(s.prefill_s for s in stats), 4), "decode_s": round(decode, 4),
            "decode_steps": steps, "decode_s_per_step": decode / steps if steps else None,
            "oom_retries": sum(s.oom_retries for s in stats)}
