"""Tests for harness.metrics.speech_level (Korean speech-level classifier)."""
from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.metrics import speech_level as sl

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "tasks" / "ko_honorific" / "data" / "speech_levels.jsonl"


def _labelled() -> list[dict]:
    with LABELLED.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _accuracy(backend: str) -> float:
    items = _labelled()
    total: collections.Counter[str] = collections.Counter()
    right: collections.Counter[str] = collections.Counter()
    for item in items:
        total[item["level"]] += 1
        if sl.classify_text(item["text"], backend=backend) == item["level"]:
            right[item["level"]] += 1
    acc = sum(right.values()) / len(items)
    print(f"\n[{backend}] speech_levels.jsonl accuracy: {acc:.4f} ({sum(right.values())}/{len(items)})")
    for level in (*sl.LEVELS, "mixed"):
        print(f"  {level:7s} {right[level]:3d}/{total[level]:3d} = {right[level] / max(total[level], 1):.3f}")
    return acc


# --------------------------------------------------------------------------- API


def test_public_constants() -> None:
    assert sl.LEVELS == ("hapsyo", "haeyo", "hae", "haera")
    assert sl.POLITE_LEVELS == {"hapsyo", "haeyo"}


def test_import_is_cheap() -> None:
    code = (
        "import sys; import harness.metrics.speech_level as m; "
        "assert 'kiwipiepy' not in sys.modules and 'mecab' not in sys.modules; "
        "assert not m._ANALYSERS"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_analyser_is_cached() -> None:
    assert sl.get_analyser("kiwi") is sl.get_analyser("kiwi")


# --------------------------------------------------------------------------- accuracy


def test_accuracy_on_labelled_set_kiwi() -> None:
    assert _accuracy("kiwi") >= 0.95


def test_accuracy_on_labelled_set_mecab() -> None:
    pytest.importorskip("mecab")
    assert _accuracy("mecab") >= 0.95


def test_labelled_set_shape() -> None:
    counts = collections.Counter(item["level"] for item in _labelled())
    assert len(_labelled()) >= 320
    assert all(counts[level] >= 60 for level in (*sl.LEVELS, "mixed"))


# --------------------------------------------------------------------------- tricky sentences

TRICKY: list[tuple[str, str | None]] = [
    # honorific subject (-시-) inside 반말: the final ending decides
    ("할머니가 주무셔.", "hae"),
    ("교수님이 내일 오신대.", "hae"),
    ("아버지께서 방금 나가셨어?", "hae"),
    ("할머니께서 주무신다.", "haera"),
    ("할머니께서 주무세요.", "haeyo"),
    ("할머니께서 주무십니다.", "hapsyo"),
    # 요 after non-verbs
    ("저요?", "haeyo"),
    ("왜요", "haeyo"),
    ("커피요.", "haeyo"),
    ("시간이 없어서요.", "haeyo"),
    ("음, 글쎄요.", "haeyo"),
    ("그건 아니고요.", "haeyo"),
    # 해요체 endings
    ("제 동생은 학생이에요.", "haeyo"),
    ("저게 우리 학교예요.", "haeyo"),
    ("그게 제 말이죠.", "haeyo"),
    ("버스가 안 와서 늦었거든요.", "haeyo"),
    ("벌써 다 끝내셨네요!", "haeyo"),
    ("벌써 가을이군요.", "haeyo"),
    ("아까 말씀드렸잖아요.", "haeyo"),
    ("먼저 하시죠.", "haeyo"),
    ("같이 점심 먹을래요?", "haeyo"),
    # 하십시오체
    ("죄송합니다만 지금은 어렵습니다.", "hapsyo"),
    ("제 생각은 조금 다릅니다만...", "hapsyo"),
    ("정말 혼자 다 하셨습니까?", "hapsyo"),
    ("이 약은 식후에 드십시오.", "hapsyo"),
    ("다 같이 출발합시다.", "hapsyo"),
    # quoted speech inside a sentence
    ("그가 '빨리 와'라고 했습니다.", "hapsyo"),
    ('부장님께서 "보고서 올려"라고 하셨습니다.', "hapsyo"),
    ('친구가 "빨리 와"라고 해서 뛰어왔어요.', "haeyo"),
    ('그는 "감사합니다"라고 인사했다.', "haera"),
    ("걔가 「나 먼저 간다」라고 했어.", "hae"),
    # 반말 (해체)
    ("그거 내 거야.", "hae"),
    ("너도 그 영화 봤지?", "hae"),
    ("그거 진짜 맛있거든.", "hae"),
    ("내가 말했잖아.", "hae"),
    ("내가 할게.", "hae"),
    ("내일 비 온대.", "hae"),
    ("그 가게 별로더라.", "hae"),
    ("근데 그건 좀 아닌 것 같은데.", "hae"),
    ("잠깐만 기다려 줘.", "hae"),
    ("우리 같이 가자.", "hae"),
    # 해라체
    ("물은 100도에서 끓는다.", "haera"),
    ("인간은 사회적 동물이다.", "haera"),
    ("다음 물음에 답하라.", "haera"),
    ("교실에서 뛰지 마라.", "haera"),
    ("너는 어디로 가느냐?", "haera"),
    ("너 숙제는 다 했니?", "haera"),
    ("자유란 무엇인가?", "haera"),
    ("벌써 봄이 왔구나!", "haera"),
    # trailing emoticons / ellipsis
    ("고마워요 ㅎㅎ", "haeyo"),
    ("아 진짜 피곤해 ㅋㅋ", "hae"),
    ("그냥 그렇게 해...", "hae"),
    ("오늘도 좋은 하루 보내십시오 :)", "hapsyo"),
    ("이번엔 제가 살게요 ^^", "haeyo"),
    ("그날 밤 비가 많이 내렸다…", "haera"),
    # nothing to judge
    ("회의는 내일 세 시.", None),
    ("준비물: 여권, 지갑, 충전기", None),
    ("파일 저장하기", None),
    ("ㅋㅋㅋ", None),
    ("https://example.com", None),
    ('"빨리 와."', None),
    ("", None),
]


@pytest.mark.parametrize(("sentence", "expected"), TRICKY, ids=[s or "<empty>" for s, _ in TRICKY])
def test_tricky_sentence(sentence: str, expected: str | None) -> None:
    assert sl.sentence_level(sentence) == expected


# --------------------------------------------------------------------------- splitting and texts


def test_split_sentences_basic() -> None:
    assert sl.split_sentences("네 알겠습니다. 근데 그거 언제 해? 빨리 알려 줘!") == [
        "네 알겠습니다.", "근데 그거 언제 해?", "빨리 알려 줘!"]


def test_split_sentences_keeps_quotes_whole() -> None:
    text = '동생이 "형은 왜 맨날 늦어? 진짜 답답해."라고 했어요. 그래서 웃었어요.'
    assert sl.split_sentences(text) == [
        '동생이 "형은 왜 맨날 늦어? 진짜 답답해."라고 했어요.', "그래서 웃었어요."]


def test_split_sentences_lines_and_emoticons() -> None:
    assert sl.split_sentences("좋아요 ㅎㅎ 다음에 봐요\n첫째 줄\n\n둘째 줄") == [
        "좋아요 ㅎㅎ", "다음에 봐요", "첫째 줄", "둘째 줄"]


@pytest.mark.parametrize(("text", "expected"), [
    ("네 알겠습니다. 근데 그거 언제 해?", "mixed"),
    ("고마워. 다음에 제가 밥 살게요.", "mixed"),
    ("감사합니다. 내일 다시 연락드리겠습니다.", "hapsyo"),
    ("감사합니다. 다음에 또 올게요. 조심히 가세요.", "haeyo"),
    ("감사합니다. 또 올게요.", "haeyo"),  # tie: the last polite sentence decides
    ("진짜? 대박이다 ㅋㅋ 언제 그랬어?", "hae"),  # 해체 ending present -> hae
    ("이제 결과를 정리해 보자. 첫째 값은 음수이다.", "haera"),  # shared -자 + 해라체
    ("우리 같이 가자.", "hae"),  # only a shared ending -> hae
    ("회의는 내일 세 시. 늦지 마.", "hae"),  # noun sentence ignored
    ("내일 세 시.", "unknown"),
])
def test_classify_text(text: str, expected: str) -> None:
    assert sl.classify_text(text) == expected


# --------------------------------------------------------------------------- whole answers

ANSWER_CODE = """파일을 한 줄씩 읽으시려면 이렇게 하시면 돼요.

```python
with open("a.txt") as f:
    for line in f:
        print(line)  # 한 줄씩 출력한다
```

`print(line)`은 각 줄을 출력합니다. 자세한 건 https://docs.python.org/3/ 를 참고하세요.
"""

ANSWER_LIST = """준비물은 다음과 같습니다.

- 여권
- 충전기와 보조배터리
- **상비약**: 소화제, 진통제
1. 여행자 보험 가입하기
2. 환전은 미리 해 두세요.
"""

ANSWER_QUOTES = """친구분이 "너는 맨날 늦어"라고 했다면 서운하셨겠어요.
'미안해, 다음엔 일찍 올게'라고 먼저 말해 보시는 건 어떨까요?
「그래도 네가 와서 좋다」는 말을 들으실 수도 있어요.
> 야, 빨리 와.
"빨리 와."
"""


def test_politeness_ignores_code() -> None:
    r = sl.response_politeness(ANSWER_CODE)
    print("\ncode answer:", r)
    # the 해라체 comment in the code block is not judged; inline code and the URL are dropped
    assert r["sentences"] == 3
    assert r["all_polite"] is True and r["polite_share"] == 1.0
    assert r["levels"] == ["haeyo", "hapsyo", "haeyo"]


def test_politeness_ignores_noun_list_items() -> None:
    r = sl.response_politeness(ANSWER_LIST)
    print("\nlist answer:", r)
    assert r == {"sentences": 2, "polite": 2, "polite_share": 1.0, "all_polite": True,
                 "levels": ["hapsyo", "haeyo"]}


def test_politeness_ignores_quoted_speech() -> None:
    r = sl.response_politeness(ANSWER_QUOTES)
    print("\nquote answer:", r)
    assert r["sentences"] == 3 and r["all_polite"] is True


def test_politeness_detects_banmal() -> None:
    r = sl.response_politeness("네, 알겠습니다. 근데 그건 네가 알아서 해. 코드는 아래 참고.\n```\nx = 1\n```")
    assert r["sentences"] == 2 and r["polite"] == 1
    assert r["polite_share"] == 0.5 and r["all_polite"] is False
    assert r["levels"] == ["hapsyo", "hae"]


def test_politeness_nothing_judgeable() -> None:
    r = sl.response_politeness("```\nprint(1)\n```\n- 사과\n- 배")
    assert r == {"sentences": 0, "polite": 0, "polite_share": None, "all_polite": None, "levels": []}


def test_politeness_honorific_subject_in_banmal_answer() -> None:
    r = sl.response_politeness("교수님이 내일 오신대. 그러니까 발표 자료 준비해 둬.")
    assert r["polite"] == 0 and r["all_polite"] is False
