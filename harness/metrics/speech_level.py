"""Korean speech-level (종결어미 높임 등급) classifier for model answers.

The level of a sentence is read off its sentence-final ending, found by morphological
analysis (kiwipiepy by default, python-mecab-ko as an alternative backend):

* ``hapsyo`` 하십시오체: -ㅂ니다/-습니다(만), -ㅂ니까/-습니까, -(으)십시오/-시오, -ㅂ시다/-읍시다
* ``haeyo``  해요체: any ending or word closed by 요 (-어요, -세요, -죠 = -지요, 저요?, 글쎄요)
* ``hae``    해체/반말: -어/-아, -지, -야, -거든, -잖아, -네, -군, -는데, -ㄹ게, -ㄹ래, -대, -더라, ...
* ``haera``  해라체 (plain written style): -다/-ㄴ다/-는다, -(으)라/-어라, -냐/-느냐, -니,
  -는가/-ㄴ가, -구나, -마

-자 and -ㄹ까 are shared by 해체 and 해라체; alone they count as ``hae``. The analyser is loaded
lazily on first use and cached at module level, so importing this module is cheap.
See docs/speech_level.md for the rules, the measured accuracy and the choice of backend.
"""
from __future__ import annotations

import os
import re
from typing import Callable

LEVELS = ("hapsyo", "haeyo", "hae", "haera")
POLITE_LEVELS = {"hapsyo", "haeyo"}
BACKENDS = ("kiwi", "mecab")
DEFAULT_BACKEND = os.environ.get("KOBENCH_SPEECH_BACKEND", "kiwi")

Morphs = list[tuple[str, str]]
_ANALYSERS: dict[str, Callable[[str], Morphs]] = {}

# ---------------------------------------------------------------------------
# analysers (lazy)
# ---------------------------------------------------------------------------


def _load_kiwi() -> Callable[[str], Morphs]:
    from kiwipiepy import Kiwi

    kiwi = Kiwi()

    def analyse(text: str) -> Morphs:
        return [(t.form, t.tag) for t in kiwi.tokenize(text)]

    analyse.kiwi = kiwi  # type: ignore[attr-defined]
    return analyse


def _load_mecab() -> Callable[[str], Morphs]:
    from mecab import MeCab

    mecab = MeCab()

    def analyse(text: str) -> Morphs:
        out: Morphs = []
        for m in mecab.parse(text):
            expr = m.feature.expression
            if "+" in m.pos and expr:
                # compound token, e.g. 해요 VV+EF with expression "하/VV/*+아요/EF/*"
                for part in expr.split("+"):
                    bits = part.split("/")
                    if len(bits) >= 2:
                        out.append((bits[0], bits[1]))
            else:
                out.append((m.surface, m.pos.split("+")[-1]))
        return out

    return analyse


def get_analyser(backend: str | None = None) -> Callable[[str], Morphs]:
    """Return the (cached) morphological analyser for ``backend`` ("kiwi" or "mecab")."""
    name = backend or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
    if name not in _ANALYSERS:
        _ANALYSERS[name] = _load_kiwi() if name == "kiwi" else _load_mecab()
    return _ANALYSERS[name]


# ---------------------------------------------------------------------------
# text cleaning and sentence splitting
# ---------------------------------------------------------------------------

_FENCE_RE = re.compile(r"(^|\n)[ \t]*(```|~~~)[^\n]*\n.*?(\n[ \t]*\2[ \t]*(?=\n|$)|$)", re.S)
_INLINE_CODE_RE = re.compile(r"`[^`\n]*`")
_URL_RE = re.compile(r"(https?://|www\.)\S+")
# straight single quotes only when they are not apostrophes (It's, don't)
_QUOTE_RE = re.compile(
    r"\"[^\"\n]*\"|“[^”\n]*”|‘[^’\n]*’|「[^」\n]*」|『[^』\n]*』|(?<![A-Za-z0-9])'[^'\n]*'(?![A-Za-z])"
)
_LIST_MARK_RE = re.compile(r"^\s*(?:[-*+•·▪◦]|\d{1,3}[.)]|[a-zA-Z][.)]|[①-⑳])\s+")
_MD_RE = re.compile(r"^\s*#{1,6}\s+|\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)")
# laughter/crying jamo runs, ^^, ;;, western emoticons, tildes
_EMO = r"(?:[ㄱ-ㅎㅏ-ㅣ]{1,}|\^\^;*|\^_\^|;;+|[:;]-?[)(DPp]|~+|[♡♥☆★]+|[\U0001F300-\U0001FAFF\u2600-\u27BF]+)"
_TRAIL_RE = re.compile(r"(?:\s*(?:" + _EMO + r"|[.!?…,;:·~)\]\"'”’」』]+))+\s*$")
_LEAD_RE = re.compile(r"^\s*(?:" + _EMO + r"\s*)+")
_BOUNDARY_RE = re.compile(r"[.!?…]+[\"'”’」』)]*\s+|(?<=[ㄱ-ㅎㅏ-ㅣ]{2})\s+|(?<=\^\^)\s+|~+\s+")
_HANGUL_RE = re.compile(r"[가-힣]")


def _quote_spans(line: str) -> list[tuple[int, int]]:
    return [m.span() for m in _QUOTE_RE.finditer(line)]


def _split_line(line: str) -> list[str]:
    spans = _quote_spans(line)
    out: list[str] = []
    start = 0
    for m in _BOUNDARY_RE.finditer(line):
        if any(a < m.start() < b for a, b in spans):
            continue  # punctuation inside quoted speech is not a boundary
        piece = line[start:m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    rest = line[start:].strip()
    if rest:
        out.append(rest)
    return out


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at line breaks and at . ! ? … (not inside quotes)."""
    out: list[str] = []
    for line in text.splitlines():
        out.extend(_split_line(line))
    return out


def _clean_sentence(sentence: str) -> str:
    """Drop URLs, inline code, quoted speech and emoticons; end with one . ? or ! mark.

    The analysers (mecab-ko-dic especially) tag the last word far better when the sentence
    is closed by a punctuation mark, so one is restored after the trailing clutter is cut.
    """
    s = _URL_RE.sub(" ", sentence)
    s = _INLINE_CODE_RE.sub(" ", s)
    s = _QUOTE_RE.sub(" ", s)
    s = _LEAD_RE.sub("", s)
    m = _TRAIL_RE.search(s)
    tail = m.group(0) if m else ""
    s = s[: m.start()] if m else s
    s = s.strip()
    if not s:
        return ""
    mark = "?" if "?" in tail else "!" if "!" in tail else "."
    return s + mark


# ---------------------------------------------------------------------------
# ending rules
# ---------------------------------------------------------------------------

_JAMO_MAP = str.maketrans({"ᆫ": "ㄴ", "ᆯ": "ㄹ", "ᆸ": "ㅂ", "ᄇ": "ㅂ", "ᆷ": "ㅁ", "ᆼ": "ㅇ", "ᆺ": "ㅅ"})
_HAPSYO_ENDS = ("니다", "ㅂ니까", "습니까", "니다만", "ㅂ시다", "읍시다",
                "ㅂ시오", "십시오", "시오", "옵니다", "옵니까")
_HAERA_ENDS = ("다", "냐", "는가", "ㄴ가", "은가", "던가", "는고", "ㄴ고", "구나", "로구나", "려무나")
_HAERA_EXACT = ("니", "으니", "마", "으마", "렴", "으렴")
_SHARED_ENDS = ("자", "ㄹ까", "을까")  # 해체 and 해라체 alike


def ending_level(form: str) -> tuple[str, bool]:
    """Level of one sentence-final ending form, plus whether it is shared by 해체/해라체."""
    f = form.translate(_JAMO_MAP)
    if f.endswith("요") or f.endswith("죠"):
        return "haeyo", False
    if f.endswith(_HAPSYO_ENDS):
        return "hapsyo", False
    if f == "오":  # mecab splits 드십시오 as 드십/시/오: -(으)시오 imperative
        return "hapsyo", False
    if f.endswith(_SHARED_ENDS):
        return "hae", True
    if f.endswith("라") and not f.endswith("더라"):
        return "haera", False  # 하라, 해라, 가거라, 하느니라 (not 해체 -더라)
    if f.endswith(_HAERA_ENDS) or f in _HAERA_EXACT:
        return "haera", False
    return "hae", False


_PUNCT_TAGS = {"SF", "SP", "SS", "SE", "SO", "SW", "SY", "SC", "SSO", "SSC", "SB"}


def judge_sentence(sentence: str, backend: str | None = None) -> tuple[str, bool] | None:
    """(level, shared_ending) of one sentence, or None when it has no final ending to judge."""
    s = _clean_sentence(_MD_RE.sub("", _LIST_MARK_RE.sub("", sentence)))
    if not _HANGUL_RE.search(s):
        return None
    morphs = [m for m in get_analyser(backend)(s) if m[1] not in _PUNCT_TAGS]
    if not morphs:
        return None
    form, tag = morphs[-1]
    if form.endswith("요") and (tag.startswith("J") or tag == "IC"):
        # 요 particle after a noun, adverb, interjection or connective ending:
        # 저요? 시간이 없어서요. 글쎄요. (mecab also tags 거든요 etc. as JX)
        return "haeyo", False
    if tag == "IC":
        return None
    if tag.startswith("J") and len(morphs) > 1 and morphs[-2][1] in ("EF", "EC"):
        form, tag = morphs[-2]  # 다릅니다만, 했거든요 + particle
    if tag in ("EF", "EC"):
        return ending_level(form)
    return None  # noun phrase, ETN/ETM nominal ending (확인함, 저장하기), adverb, foreign word


def sentence_level(sentence: str) -> str | None:
    """Speech level of one sentence, or None when no final ending can be judged."""
    judged = judge_sentence(sentence)
    return judged[0] if judged else None


# ---------------------------------------------------------------------------
# whole answers
# ---------------------------------------------------------------------------


def _prose_lines(text: str) -> list[str]:
    """Lines of prose: code blocks, inline code, URLs and block quotes removed."""
    text = _FENCE_RE.sub("\n", text)
    lines: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith(">"):
            continue  # markdown block quote = quoted material
        line = _INLINE_CODE_RE.sub(" ", _URL_RE.sub(" ", line))
        if "|" in line and line.strip().startswith("|"):
            lines.extend(c for c in line.split("|") if c.strip() and not set(c.strip()) <= set("-: "))
            continue
        lines.append(_MD_RE.sub("", _LIST_MARK_RE.sub("", line)))
    return lines


def _judged(text: str, backend: str | None = None) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for line in _prose_lines(text):
        for sent in _split_line(line):
            j = judge_sentence(sent, backend)
            if j is not None:
                out.append(j)
    return out


def response_politeness(text: str, backend: str | None = None) -> dict:
    """Politeness summary of a model answer: judged sentences, polite ones, share, levels."""
    levels = [lv for lv, _ in _judged(text, backend)]
    n = len(levels)
    polite = sum(lv in POLITE_LEVELS for lv in levels)
    return {
        "sentences": n,
        "polite": polite,
        "polite_share": polite / n if n else None,
        "all_polite": polite == n if n else None,
        "levels": levels,
    }


def classify_text(text: str, backend: str | None = None) -> str:
    """Level of a whole text: one of LEVELS, "mixed", or "unknown" (nothing judgeable).

    mixed   = at least one polite (hapsyo/haeyo) and one non-polite (hae/haera) sentence.
    polite  = the more frequent of hapsyo/haeyo; a tie goes to the last polite sentence.
    plain   = hae if any sentence has an unshared 해체 ending, else haera if any has a 해라체
              ending, else hae (only shared -자/-ㄹ까 endings).
    """
    judged = _judged(text, backend)
    if not judged:
        return "unknown"
    polite = [lv for lv, _ in judged if lv in POLITE_LEVELS]
    plain = [(lv, shared) for lv, shared in judged if lv not in POLITE_LEVELS]
    if polite and plain:
        return "mixed"
    if polite:
        n_hapsyo = polite.count("hapsyo")
        n_haeyo = len(polite) - n_hapsyo
        if n_hapsyo != n_haeyo:
            return "hapsyo" if n_hapsyo > n_haeyo else "haeyo"
        return polite[-1]
    if any(lv == "hae" and not shared for lv, shared in plain):
        return "hae"
    if any(lv == "haera" for lv, _ in plain):
        return "haera"
    return "hae"
