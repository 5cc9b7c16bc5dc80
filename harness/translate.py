"""Translate Korean markdown files into English with any kobench model, keeping code blocks untouched.

A document is cut into segments: fenced and indented code blocks are copied through as they are (never sent to the
model), and the prose between them is split at headings into sections, merged back together while they stay under a
token budget (a section over the budget is split at blank lines). Each prose unit is translated greedily with the same
prompt as the ko_md_translation task, so a model translates here as it was scored there.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from harness.errors import KobenchError
from harness.metrics.markdown import preservation
from harness.taskdata.md_translation import DEFAULT_SYSTEM, SOURCE_HEADER, clean_translation, prompt_text

DEFAULT_BUDGET = 512  # source tokens per model call
DEFAULT_MAX_NEW_TOKENS = 1536
STOP = "\n" + SOURCE_HEADER.strip()  # a plain model starting a new "### Korean" frame has finished


@dataclass
class Segment:
    """A piece of a document: prose to translate, or code (and blank space) to copy through."""

    text: str
    translate: bool


def _code_and_heading_lines(text: str) -> tuple[list[tuple[int, int]], set[int]]:
    """Line ranges [start, end) of code blocks (fenced or indented, at any nesting) and heading start lines."""
    code, headings = [], set()
    # the parser the preservation metric uses (CommonMark + GFM tables), so both see the same blocks
    for token in MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text):
        if token.type in ("fence", "code_block") and token.map:
            code.append((token.map[0], token.map[1]))
        elif token.type == "heading_open" and token.map:
            headings.add(token.map[0])
    return code, headings


def split_document(text: str, budget: int, count_tokens: Callable[[str], int]) -> list[Segment]:
    """Segments of a markdown document whose concatenation is the document again, byte for byte."""
    lines = text.splitlines(keepends=True)
    code_ranges, headings = _code_and_heading_lines(text)
    in_code = {}
    for start, end in code_ranges:
        for i in range(start, min(end, len(lines))):
            in_code[i] = start
    # 1. code blocks, and prose sections cut at every heading
    pieces: list[Segment] = []
    for i, line in enumerate(lines):
        is_code = i in in_code
        new_piece = (not pieces or pieces[-1].translate == is_code or (is_code and in_code[i] == i)
                     or (not is_code and i in headings))
        if new_piece:
            pieces.append(Segment(line, translate=not is_code))
        else:
            pieces[-1].text += line
    # 2. a section over the budget splits at blank lines; consecutive prose merges while it fits the budget
    units: list[Segment] = []
    for piece in pieces:
        parts = [piece.text] if not piece.translate or count_tokens(piece.text) <= budget else _paragraphs(piece.text)
        for part in parts:
            last = units[-1] if units else None
            if (piece.translate and last is not None and last.translate
                    and count_tokens(last.text + part) <= budget):
                last.text += part
            else:
                units.append(Segment(part, piece.translate))
    return units


def _paragraphs(text: str) -> list[str]:
    """Split at blank lines, keeping each blank line with the paragraph before it."""
    return [p for p in re.split(r"(?<=\n\n)(?=[^\n])", text) if p]


def translate_markdown(text: str, translate_unit: Callable[[str], str], budget: int,
                       count_tokens: Callable[[str], int],
                       on_unit: Callable[[], None] | None = None) -> str:
    """The document with every prose unit replaced by `translate_unit(unit)`; code and spacing stay as they were."""
    out = []
    for segment in split_document(text, budget, count_tokens):
        core = segment.text.strip()
        if not segment.translate or not core:
            out.append(segment.text)
            continue
        lead = segment.text[:len(segment.text) - len(segment.text.lstrip())]
        trail = segment.text[len(segment.text.rstrip()):]
        out.append(lead + translate_unit(core).strip() + trail)
        if on_unit:
            on_unit()
    return "".join(out)


def count_units(text: str, budget: int, count_tokens: Callable[[str], int]) -> int:
    """How many model calls translating `text` takes (for a progress bar)."""
    return sum(1 for s in split_document(text, budget, count_tokens) if s.translate and s.text.strip())


class Translator:
    """A loaded model that translates one prose unit at a time, greedily, with the ko_md_translation prompt."""

    def __init__(self, model: Any, tokenizer: Any, device: str, system: str = DEFAULT_SYSTEM,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt(self, source: str) -> str:
        body = prompt_text({"source": source}, chat=self.chat)
        if not self.chat:
            return f"{self.system}\n\n{body}"
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": body}]
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role (jinja2 TemplateError): the instruction heads the turn
            merged = [{"role": "user", "content": f"{self.system}\n\n{body}"}]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    def __call__(self, source: str) -> str:
        import torch

        prompt = self.prompt(source)
        # a chat-templated prompt already carries its special tokens (BOS included)
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not self.chat).to(self.device)
        # about twice the source length is room for any faithful translation; the cap bounds a runaway model
        budget = min(self.max_new_tokens, 2 * self.count_tokens(source) + 32)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            output = self.model.generate(**encoded, max_new_tokens=budget, do_sample=False, pad_token_id=pad,
                                         stop_strings=[STOP], tokenizer=self.tokenizer)
        text = self.tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        return clean_translation(text.split(STOP)[0])


@dataclass
class FileResult:
    """One translated file and how well it kept its source's markdown structure."""

    source: Path
    output: Path
    md_preservation: float
    code_exact: float | None
    units: int


def plan_files(file: Path | None, out: Path | None, input_dir: Path | None,
               output_dir: Path | None) -> list[tuple[Path, Path]]:
    """(source, output) pairs from the command's FILE [-o OUT] or --input-dir/--output-dir form."""
    if (file is None) == (input_dir is None):
        raise KobenchError("pass either FILE [-o OUT] or --input-dir DIR --output-dir DIR")
    if file is not None:
        if output_dir is not None:
            raise KobenchError("--output-dir goes with --input-dir; for one FILE use -o OUT")
        if not file.is_file():
            raise KobenchError(f"{file}: no such markdown file")
        target = out or file.with_name(f"{file.stem}.en{file.suffix or '.md'}")
        if target.resolve() == file.resolve():
            raise KobenchError(f"-o {out}: is the source file itself; choose another output path")
        return [(file, target)]
    if out is not None:
        raise KobenchError("-o goes with FILE; with --input-dir use --output-dir")
    if not input_dir.is_dir():
        raise KobenchError(f"--input-dir {input_dir}: no such directory")
    if output_dir is None:
        raise KobenchError("--input-dir needs --output-dir DIR (where the English files go)")
    if output_dir.resolve() == input_dir.resolve():
        raise KobenchError(f"--output-dir {output_dir}: is the input directory; the sources would be overwritten")
    sources = sorted(p for p in input_dir.rglob("*.md") if output_dir.resolve() not in p.resolve().parents)
    if not sources:
        raise KobenchError(f"--input-dir {input_dir}: no .md files in it")
    return [(p, output_dir / p.relative_to(input_dir)) for p in sources]


def translate_files(pairs: list[tuple[Path, Path]], translator: Translator, budget: int = DEFAULT_BUDGET,
                    progress: Callable[..., None] | None = None) -> list[FileResult]:
    """Translate each source file into its output path; `progress(event, **info)` gets 'plan' and 'unit' events."""
    from harness.taskdata import read_text

    progress = progress or (lambda *a, **k: None)
    texts = [read_text(source) for source, _ in pairs]
    plans = [count_units(text, budget, translator.count_tokens) for text in texts]
    progress("plan", total=sum(plans), files=len(pairs))
    results = []
    for (source, target), text, units in zip(pairs, texts, plans):
        progress("file", path=str(source), units=units)
        english = translate_markdown(text, translator, budget, translator.count_tokens,
                                     on_unit=lambda: progress("unit"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(english, encoding="utf-8")
        score = preservation(text, english)
        results.append(FileResult(source, target, score["md_preservation"], score["code_exact"], units))
    return results
