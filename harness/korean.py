"""Small Korean-language utilities shared by tasks: particles that depend on the preceding syllable."""
from __future__ import annotations

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
RIEUL_FINAL = 8  # index of ㄹ among the 28 final-consonant slots (0 = none)


def final_consonant(word: str) -> int | None:
    """Index (1-27) of the last syllable's final consonant, 0 if it has none, None if it is not Hangul."""
    word = word.rstrip()
    if not word:
        return None
    code = ord(word[-1])
    if not HANGUL_FIRST <= code <= HANGUL_LAST:
        return None
    return (code - HANGUL_FIRST) % 28


def with_particle(word: str, after_consonant: str, after_vowel: str) -> str:
    """`word` + the particle form its last syllable takes: with_particle("원인", "은", "는") == "원인은".

    For 으로/로 pass ("으로", "로"): a final ㄹ takes 로 like a vowel does (서울로, 결말로), so use `with_euro`.
    Non-Hangul endings get the consonant form followed by the vowel form in parentheses, e.g. "API은(는)".
    """
    final = final_consonant(word)
    if final is None:
        return f"{word}{after_consonant}({after_vowel})"
    return word + (after_consonant if final else after_vowel)


def with_euro(word: str) -> str:
    """`word` + 으로/로: 으로 after a final consonant other than ㄹ, 로 after a vowel or ㄹ (원인으로, 전제로, 결말로)."""
    final = final_consonant(word)
    if final is None:
        return f"{word}(으)로"
    return word + ("으로" if final and final != RIEUL_FINAL else "로")
