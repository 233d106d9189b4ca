"""Split an R1-Omni answer into its ``<think>`` and ``<answer>`` parts."""
from __future__ import annotations

import re

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_TAGS = re.compile(r"</?(think|answer)>", re.IGNORECASE)


def parse_output(text: str) -> tuple[str | None, str | None, bool]:
    """``(think, answer, format_ok)`` of a generated text.

    ``format_ok`` means a think block followed by an answer block. Without an
    answer tag the answer is whatever text remains outside a think block
    (tags removed), or None when nothing remains.
    """
    think_m = _THINK.search(text)
    answer_m = _ANSWER.search(text)
    think = think_m.group(1).strip() if think_m else None
    if answer_m:
        answer: str | None = answer_m.group(1).strip()
    else:
        rest = _THINK.sub(" ", text)
        rest = _TAGS.sub(" ", rest).strip()
        answer = rest or None
    ok = bool(think_m and answer_m and think_m.end() <= answer_m.start())
    return think, answer, ok
