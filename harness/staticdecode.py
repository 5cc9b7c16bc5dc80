"""Greedy decoding of one bucket with a static KV cache, the decode step replayed as a CUDA graph.

Eager `generate` launches several hundred small kernels per decode step (32 layers x ~15 ops) and waits on Python
between them; on an H200 an EXAONE-7.8B step at batch 16 took 57 ms of wall time for 7.65 ms of GPU kernels
(docs/performance.md). Here the bucket's KV cache is allocated once at its final length (transformers'
StaticCache), so every decode step has the same shapes and the same tensor addresses; the step is then captured
once as a CUDA graph and replayed, one launch per token. Capture costs about one eager step, so each bucket gets its
own graph at its exact (batch, prompt + max_gen_toks) shape: no shape rounding, no compiler.

What the loop reproduces from `HFLM._model_generate` -> `model.generate` (greedy):
- positions of a left-padded prompt: cumsum(attention_mask) - 1, 0 on padding; the prompt's padding never attended;
- next token = argmax of the float32 logits; a row that has produced an EOS of the generation config writes the pad
  token from then on; the batch stops when every row has, at max_length, or when lm-eval's stop-sequence criteria
  (the same StoppingCriteriaList objects, called on the same token ids) say every row has stopped.
The tokens of each row are therefore what `generate` writes, up to the rounding of a different attention length
(the cache's full length, masked, instead of the tokens so far): exact on a CPU in fp32 (tests/test_fastgen.py).

Decode steps attend with `decode_attention` below: eager attention's arithmetic (bf16 scores + additive mask, fp32
softmax), but each group of query heads reads its key/value head in place. sdpa with a mask (and eager attention)
first copies every key/value head once per query head (repeat_kv): at batch 64 that copy moved more bytes a step
than the weights (bench/decode_graph.py). The prefill keeps the model's own attention.

The host checks the stop sequences of token t while the GPU computes token t+1 (the step writes its own next input
on the device), so the GPU does not wait on Python between steps; a bucket that stops at t discards t+1.
"""
from __future__ import annotations

import inspect
import time
from typing import Any

# generation-config fields that change greedy decoding; any set to a non-default value keeps model.generate
_GREEDY_DEFAULTS: dict[str, Any] = {
    "num_beams": 1, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "bad_words_ids": None, "min_length": 0, "min_new_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "guidance_scale": None, "watermarking_config": None,
    "max_new_tokens": None, "assistant_model": None, "prompt_lookup_num_tokens": None,
}
# gen_kwargs that greedy decoding ignores (model.generate warns about them and decodes greedily)
_GREEDY_IGNORED = {"top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"}
# prefill attention implementations the loop is tested with (decode steps use decode_attention)
_PREFILL_ATTENTION = {"sdpa", "eager"}
DECODE_ATTENTION = "kobench_decode"


def decode_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float,
                     dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """One new token's attention over the static cache, grouped-query heads without copying keys and values:
    query [batch, heads, 1, dim] viewed as [batch, kv_heads, heads / kv_heads, dim] (repeat_kv's head order),
    then eager attention's steps. Returns [batch, 1, heads, dim] as transformers' attention functions do."""
    import torch

    batch, heads, length, dim = query.shape
    grouped = query.reshape(batch, key.shape[1], heads // key.shape[1] * length, dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value).reshape(batch, heads, length, dim)
    return out.transpose(1, 2).contiguous(), None


def _register_decode_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, eager_mask)  # never built: decode steps pass a 4D mask


def blocker(lm: Any, kwargs: dict[str, Any]) -> str | None:
    """Why this bucket cannot use the static-cache loop (None: it can). `kwargs` are the normalized gen_kwargs
    without until / max_gen_toks / max_length."""
    model = lm.model
    config = model.config
    devices = set((getattr(model, "hf_device_map", None) or {}).values())
    if len(devices) > 1:  # --parallelize: one stream cannot capture kernels of several GPUs
        return "the model is split over several devices"
    if getattr(lm, "mixed_precision_dtype", None) is not None:
        return "lm-eval's mixed-precision autocast is on"
    if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
        return "sampling (do_sample / temperature > 0)"
    unknown = set(kwargs) - {"do_sample", "temperature"} - _GREEDY_IGNORED
    if unknown:
        return f"generation kwargs {sorted(unknown)}"
    generation = getattr(model, "generation_config", None)
    for name, default in _GREEDY_DEFAULTS.items():
        value = getattr(generation, name, default)
        if value is not None and value != default:
            return f"generation_config.{name}={value!r}"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "sliding_window", None) or any(kind != "full_attention"
                                                      for kind in getattr(text, "layer_types", None) or []):
        return "sliding-window attention layers (one mask cannot serve every layer)"
    attention = getattr(config, "_attn_implementation", None)
    if attention not in _PREFILL_ATTENTION:
        return f"attention implementation {attention!r} (static decoding takes sdpa or eager)"
    if text.num_attention_heads % (getattr(text, "num_key_value_heads", None) or text.num_attention_heads):
        return "query heads not a multiple of key/value heads"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not declare static-cache support"
    return None


class BucketDecode:
    """One bucket: prefill, then greedy steps, eagerly or replayed from a CUDA graph (`capture`).

    `stopping` is lm-eval's StoppingCriteriaList for this bucket; `run()` returns the [batch, prompt + new] token
    ids on the CPU, as model.generate returns them (pad after EOS), and fills the timing fields."""

    def __init__(self, model: Any, context: Any, attention_mask: Any, max_length: int, stopping: Any,
                 pad_token_id: int, capture: bool, step_forward: Any = None) -> None:
        import torch

        self.model, self.stopping, self.capture = model, stopping, capture
        # the decode step's forward: the model's own, or e.g. a torch.compile of it (bench/decode_graph.py)
        self.step_forward = step_forward or model
        self.context, self.attention_mask = context, attention_mask
        self.batch, self.prompt = context.shape
        self.max_new = max(0, max_length - self.prompt)
        self.device = context.device
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos = torch.tensor(eos_ids, dtype=torch.long, device=self.device) if eos_ids else None
        self.eos_host = torch.tensor(eos_ids, dtype=torch.long) if eos_ids else None
        self.pad = torch.tensor(pad_token_id if pad_token_id is not None else (eos_ids or [0])[0],
                                dtype=torch.long, device=self.device)
        _register_decode_attention()
        self.prefill_s = self.decode_s = self.capture_s = 0.0
        self.captured = False
        self.capture_error: str | None = None  # why a capture failed (the bucket then finished eagerly)

    def run(self) -> Any:
        import torch
        from transformers import StaticCache

        if self.max_new == 0:
            return self.context.cpu()
        start = time.perf_counter()
        cache = StaticCache(config=self.model.config, max_cache_len=self.prompt + self.max_new)
        ids = torch.empty((self.batch, self.prompt + self.max_new), dtype=torch.long)
        ids[:, :self.prompt] = self.context.cpu()
        with torch.inference_mode():
            state = self._prefill(cache)
            first = state["token"][:, 0].cpu()
        ids[:, self.prompt] = first
        self.prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        try:
            new = self._decode(cache, state, ids)
        finally:
            self.decode_s = time.perf_counter() - start - self.capture_s
        return ids[:, :self.prompt + new]

    # -- prefill: the model's own masks from the 2D attention mask, as generate runs it ------------------------

    def _prefill(self, cache: Any) -> dict[str, Any]:
        import torch

        mask = self.attention_mask
        positions = mask.long().cumsum(-1) - 1
        positions.masked_fill_(mask == 0, 0)
        # generate computes only the last position's logits when the model can (a PEFT wrapper passes it on)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
        logits = self.model(input_ids=self.context, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True, **kwargs).logits[:, -1, :]
        length = self.prompt + self.max_new
        keep = torch.ones((self.batch, length), dtype=torch.bool, device=self.device)
        keep[:, :self.prompt] = mask.bool()
        state = {"keep": keep, "arange": torch.arange(length, device=self.device),
                 "cache_position": torch.tensor([self.prompt], dtype=torch.long, device=self.device),
                 "position": positions[:, -1:] + 1,
                 "unfinished": torch.ones(self.batch, dtype=torch.bool, device=self.device),
                 "token": torch.empty((self.batch, 1), dtype=torch.long, device=self.device)}
        self._choose(logits, state)
        return state

    def _choose(self, logits: Any, state: dict[str, Any]) -> None:
        """generate's greedy choice: argmax of the float32 logits, pad for finished rows, EOS finishes a row."""
        import torch

        token = torch.where(state["unfinished"], logits.float().argmax(-1), self.pad)
        if self.eos is not None:
            state["unfinished"].logical_and_(~torch.isin(token, self.eos))
        state["token"].copy_(token[:, None])

    # -- decode: one step, eager or captured ---------------------------------------------------------------------

    def _step(self, cache: Any, state: dict[str, Any]) -> None:
        """Feed the last token at the next cache slot; write the next token into state['token'] (all on device,
        no host sync, so it can be captured)."""
        import torch

        visible = state["keep"] & (state["arange"] <= state["cache_position"])  # [batch, cache length]
        dtype = self.model.dtype
        mask = torch.zeros(visible.shape, dtype=dtype, device=self.device).masked_fill_(
            ~visible, torch.finfo(dtype).min)[:, None, None, :]  # additive, as eager attention's
        configs = {id(c): c for c in (self.model.config, self.model.config.get_text_config())}.values()
        previous = [c._attn_implementation for c in configs]
        for c in configs:
            c._attn_implementation = DECODE_ATTENTION
        try:
            logits = self.step_forward(input_ids=state["token"], attention_mask=mask,
                                       position_ids=state["position"], past_key_values=cache,
                                       use_cache=True).logits[:, -1, :]
        finally:
            for c, attention in zip(configs, previous, strict=True):
                c._attn_implementation = attention
        self._choose(logits, state)
        state["position"].add_(1)
        state["cache_position"].add_(1)

    def _decode(self, cache: Any, state: dict[str, Any], ids: Any) -> int:
        """Steps until a stop; returns the number of new tokens kept."""
        import torch

        on_cuda = self.device.type == "cuda"
        host = torch.empty((self.max_new, self.batch), dtype=torch.long, pin_memory=on_cuda)
        ready: list[Any] = [None] * self.max_new
        new = 1
        if self._stops(ids, new, state):
            return new
        graph = None
        launched = new  # tokens whose step has been issued to the device
        with torch.inference_mode():
            while True:
                if launched < self.max_new:  # issue step `launched` (the token after it) before looking at it
                    if graph is None and self.capture and launched >= 2:
                        graph = self._capture(cache, state)
                    if graph is not None:
                        graph.replay()
                    else:
                        self._step(cache, state)
                    host[launched].copy_(state["token"][:, 0], non_blocking=True)
                    if on_cuda:
                        ready[launched] = torch.cuda.Event()
                        ready[launched].record()
                    launched += 1
                if new == launched:
                    break
                if ready[new] is not None:
                    ready[new].synchronize()
                ids[:, self.prompt + new] = host[new]
                new += 1
                if self._stops(ids, new, state):
                    break
        if on_cuda:
            torch.cuda.synchronize(self.device)  # a step issued past the stop must finish before its cache goes
        return new

    def _stops(self, ids: Any, new: int, state: dict[str, Any]) -> bool:
        """generate's stopping after `new` tokens: max length, every row finished by EOS, or lm-eval's criteria."""
        if new >= self.max_new:
            return True
        upto = ids[:, :self.prompt + new]
        if self.eos_host is not None:
            import torch

            finished = torch.isin(upto[:, self.prompt:], self.eos_host).any(dim=1)
            if bool(finished.all()):
                return True
        done = self.stopping(upto, None)
        return bool(done.all()) if hasattr(done, "all") else bool(done)

    def _capture(self, cache: Any, state: dict[str, Any]) -> Any:
        """The decode step as a CUDA graph; the first step ran eagerly (cuBLAS handles, lazy buffers), so
        capture records the same kernels. None (eager from here on) when the model's step cannot be captured."""
        import torch

        start = time.perf_counter()
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step(cache, state)
        except Exception as exc:  # noqa: BLE001 - an op that syncs or allocates on the host: stay eager
            self.capture = False
            self.capture_error = f"{type(exc).__name__}: {exc}"
            torch.cuda.synchronize(self.device)
            return None
        finally:
            self.capture_s = time.perf_counter() - start
        self.captured = True
        return graph
