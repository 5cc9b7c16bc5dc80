"""Chat with a model (+ adapter) under the chat template the adapter was trained with.

The adapter directory's tokenizer carries that template (harness.models.load_model loads it with the adapter); a
base model without a template of its own gets the same kobench fallback `kobench finetune` trains with.
"""
from __future__ import annotations

from typing import Any

from finetune.template import ensure_chat_template
from harness.errors import KobenchError


class ChatSession:
    """A running conversation: each `reply` sends the whole history through the chat template."""

    def __init__(self, model: str, adapter: str | None = None, *, device: str = "auto", temperature: float = 0.0,
                 max_new_tokens: int = 256, system: str | None = None, online: bool = False,
                 trust_remote_code: bool = False) -> None:
        from harness.models import load_model, resolve_model, select_device

        if temperature < 0:
            raise KobenchError(f"--temperature {temperature}: must be 0 (greedy) or more")
        if max_new_tokens < 1:
            raise KobenchError(f"--max-new-tokens {max_new_tokens}: must be 1 or more")
        self.spec = resolve_model(model, adapter, online=online, trust_remote_code=trust_remote_code)
        self.device = select_device(device)
        self.model, self.tokenizer = load_model(self.spec, self.device)
        self.template_source = ensure_chat_template(self.tokenizer)
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.system = system
        self.history: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str) -> str:
        """The model's answer to `text`, given everything said so far (greedy unless temperature > 0)."""
        import torch

        self.history.append({"role": "user", "content": text})
        inputs = self.tokenizer.apply_chat_template(self.history, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True).to(self.device)
        sampling: dict[str, Any] = ({"do_sample": True, "temperature": self.temperature}
                                    if self.temperature > 0 else {"do_sample": False})
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, eos_token_id=self._stop_ids(),
                                         pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                         **sampling)
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        answer = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def _stop_ids(self) -> list[int]:
        """EOS and whatever the generation config also stops on (end-of-turn tokens of chat models)."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)
