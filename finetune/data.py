"""Supervised fine-tuning examples: a chat prompt and the one assistant answer to learn.

From tasks, the prompt is built by lm-eval itself (`Task.fewshot_context` with the chat template applied, zero-shot),
so the adapter trains on exactly the messages the evaluation will send: the task's description as the system turn,
its own `doc_to_text` (or a task class's chat frame, e.g. ko_honorific) as the user turn. The answer is the gold
continuation: `doc_to_target` for generate_until tasks, the gold choice's text for multiple-choice ones (under a
chat template lm-eval scores the bare choice, with no target delimiter).

From a user file: a chat-messages JSONL (`{"messages": [..., {"role": "assistant", ...}]}`, the last assistant turn
is the answer) or a `question,answer` CSV (optional `system` column).

Validation: the task's dev split, or 10% of the training examples (seeded) when a task or file has none.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import DataError, KobenchError

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")
HOLDOUT_SHARE = 0.1
MESSAGES_EXPECTED = ('one JSON object per line: {"messages": [{"role": "user", "content": "..."}, '
                     '{"role": "assistant", "content": "..."}]} (an optional system turn first)')
CSV_EXPECTED = "columns question, answer (optional: system)"


@dataclass
class SFTExample:
    """One training example: the prompt messages (system?, user, ...) and the assistant answer to learn."""

    prompt: Messages
    completion: Messages
    source: str  # where it came from: "ko_context_inference/train#12" or "data.jsonl: line 3"

    def to_record(self) -> dict[str, Any]:
        """TRL's conversational prompt-completion format: the loss covers the completion only."""
        return {"prompt": self.prompt, "completion": self.completion}


@dataclass
class SFTData:
    train: list[SFTExample]
    eval: list[SFTExample]
    # what the data was: per task or file, its paths, sha256 and example counts (stored in kobench_adapter.json)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def hashes(self) -> dict[str, str]:
        return {name: info["sha256"] for name, info in self.sources.items()}


def build_sft_data(tasks: list[str], data: str | None, seed: int, max_examples: int | None = None) -> SFTData:
    """The training and validation examples of a fine-tuning run (tasks' splits, or the user's file)."""
    result = task_examples(tasks, seed) if tasks else file_examples(Path(data).expanduser(), seed)
    if max_examples is not None and max_examples < len(result.train):
        # an evenly mixed subset, not the first N of a file sorted by category
        result.train = random.Random(seed).sample(result.train, max_examples)
    if not result.train:
        raise KobenchError("no training examples left: every item lacked a gold answer. Check the data")
    return result


# ---------------------------------------------------------------------------------------------------------------
# Tasks: prompts through lm-eval
# ---------------------------------------------------------------------------------------------------------------

def _messages_as_given(messages: Messages, add_generation_prompt: bool = True) -> Messages:
    """Stands in for a chat template in `fewshot_context`: returns the messages lm-eval would render."""
    return messages


def load_lm_eval_tasks(names: list[str]) -> dict[str, Any]:
    """lm-eval task objects of the kobench tasks, loaded the way the runner loads them."""
    from lm_eval.tasks import TaskManager

    from harness.paths import tasks_dir

    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    return manager.load(list(names))["tasks"]


def task_prompt(task: Any, doc: dict[str, Any]) -> Messages:
    """The zero-shot chat messages lm-eval sends for `doc` (system = the task's description, if any)."""
    return task.fewshot_context(doc, 0, apply_chat_template=True, chat_template=_messages_as_given)


def gold_answer(task: Any, doc: dict[str, Any]) -> str:
    """The text the model should answer: the gold choice of a multiple-choice doc, else its target."""
    target = task.doc_to_target(doc)
    if task.config.doc_to_choice is not None:
        choices = task.doc_to_choice(doc)
        if isinstance(target, int):
            return choices[target]
        if isinstance(target, str) and target.isdigit() and target not in choices:
            return choices[int(target)]
    if isinstance(target, list):
        target = target[0] if target else ""
    return "" if target is None else str(target)


def task_examples(names: list[str], seed: int) -> SFTData:
    from harness.tasks import data_hash, discover_tasks, get_task

    infos = {name: get_task(name) for name in names}
    for name, info in infos.items():
        if info.output_type not in ("multiple_choice", "generate_until"):
            raise KobenchError(f"--task {name}: a {info.output_type} task has no answer to train on; fine-tune on "
                               "multiple_choice or generate_until tasks")
        if not info.raw.get("training_split"):
            trainable = sorted(n for n, i in discover_tasks().items() if i.raw.get("training_split"))
            raise KobenchError(f"--task {name}: has no train split to fine-tune on. Tasks with one: "
                               f"{', '.join(trainable)}")
    out = SFTData(train=[], eval=[])
    for name, task in load_lm_eval_tasks(names).items():
        info = infos[name]
        if getattr(task, "multiple_input", False):
            raise KobenchError(f"--task {name}: puts its choices into the context (multiple input); not supported "
                               "for fine-tuning")
        if task.config.gen_prefix:
            raise KobenchError(f"--task {name}: starts the answer with gen_prefix, which fine-tuning does not "
                               "reproduce yet")
        train, skipped = _examples_of(task, task.training_docs(), f"{name}/{info.raw['training_split']}")
        if task.has_validation_docs():
            dev, dev_skipped = _examples_of(task, task.validation_docs(), f"{name}/{info.raw['validation_split']}")
            skipped += dev_skipped
        else:
            train, dev = _hold_out(train, seed, f"--task {name}")
        paths = [p for p in (info.split_path(info.raw["training_split"]),
                             info.split_path(info.raw.get("validation_split") or "")) if p is not None]
        out.train += train
        out.eval += dev
        out.sources[name] = {"kind": "task", "splits": [str(p.relative_to(info.folder)) for p in paths],
                             "sha256": data_hash(paths), "task_version": info.version, "n_train": len(train),
                             "n_eval": len(dev), "skipped_without_answer": skipped}
    return out


def _examples_of(task: Any, docs: Any, where: str) -> tuple[list[SFTExample], int]:
    examples, skipped = [], 0
    for index, doc in enumerate(docs):
        answer = gold_answer(task, doc)
        if not answer.strip():
            skipped += 1
            continue
        examples.append(SFTExample(prompt=task_prompt(task, doc),
                                   completion=[{"role": "assistant", "content": answer}], source=f"{where}#{index}"))
    return examples, skipped


def _hold_out(examples: list[SFTExample], seed: int, label: str) -> tuple[list[SFTExample], list[SFTExample]]:
    """A seeded 10% validation share (at least one example), the rest for training."""
    if len(examples) < 2:
        raise KobenchError(f"{label}: {len(examples)} example(s) with an answer; fine-tuning needs at least 2 "
                           "(one of them is held out to measure the validation loss)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * HOLDOUT_SHARE))
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


# ---------------------------------------------------------------------------------------------------------------
# A user's file
# ---------------------------------------------------------------------------------------------------------------

def file_examples(path: Path, seed: int) -> SFTData:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        examples = _csv_examples(path)
    elif suffix in (".jsonl", ".json"):
        examples = _messages_examples(path)
    else:
        raise KobenchError(f"--data {path}: unknown file type '{suffix or 'none'}'. Pass a chat-messages .jsonl "
                           f"({MESSAGES_EXPECTED}) or a .csv with {CSV_EXPECTED}")
    train, dev = _hold_out(examples, seed, f"--data {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return SFTData(train=train, eval=dev, sources={path.name: {"kind": "file", "path": str(path.resolve()),
                                                               "sha256": digest, "n_train": len(train),
                                                               "n_eval": len(dev)}})


def _messages_examples(path: Path) -> list[SFTExample]:
    from harness.taskdata import read_json_records

    examples = []
    for where, item in read_json_records(path):
        messages = item.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(path, where, f"no 'messages' list (keys: {', '.join(item) or 'none'})", MESSAGES_EXPECTED)
        for turn, message in enumerate(messages, start=1):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                role = message.get("role") if isinstance(message, dict) else type(message).__name__
                raise DataError(path, f"{where}, message {turn}", f"role {role!r} is not one of {', '.join(ROLES)}",
                                MESSAGES_EXPECTED)
            if not isinstance(message.get("content"), str):
                raise DataError(path, f"{where}, message {turn}", "'content' is missing or not a string",
                                MESSAGES_EXPECTED)
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise DataError(path, where, "the last message must be a non-empty assistant answer (the text to learn)",
                            MESSAGES_EXPECTED)
        if not any(m["role"] == "user" for m in messages[:-1]):
            raise DataError(path, where, "no user message before the assistant answer", MESSAGES_EXPECTED)
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
        examples.append(SFTExample(prompt=prompt, completion=[{"role": "assistant", "content": messages[-1]["content"]}],
                                   source=f"{path.name}: {where}"))
    return examples


def _csv_examples(path: Path) -> list[SFTExample]:
    from harness.taskdata import read_csv_rows

    examples = []
    for where, row in read_csv_rows(path, ["question", "answer"], ["system"], CSV_EXPECTED):
        if not row["question"] or not row["answer"]:
            empty = "question" if not row["question"] else "answer"
            raise DataError(path, where, f"empty {empty}", CSV_EXPECTED)
        prompt = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
            {"role": "user", "content": row["question"]}]
        examples.append(SFTExample(prompt=prompt, completion=[{"role": "assistant", "content": row["answer"]}],
                                   source=f"{path.name}: {where}"))
    return examples


# ---------------------------------------------------------------------------------------------------------------
# Chat template fit
# ---------------------------------------------------------------------------------------------------------------

def fit_to_template(data: SFTData, tokenizer: Any) -> bool:
    """Drop system turns when the chat template rejects them, as lm-eval's HFLM does at evaluation time.

    Returns True when system turns were dropped (recorded with the adapter)."""
    import jinja2

    sample = next((e for e in data.train + data.eval if e.prompt and e.prompt[0]["role"] == "system"), None)
    if sample is None:
        return False
    try:
        tokenizer.apply_chat_template(sample.prompt + sample.completion, tokenize=False)
        return False
    except jinja2.exceptions.TemplateError:
        for example in data.train + data.eval:
            example.prompt = [m for m in example.prompt if m["role"] != "system"]
        return True
