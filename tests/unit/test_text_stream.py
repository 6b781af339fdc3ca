from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.text_stream import TextAssembler


class CharTok:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def run(text: str, stop: list[str]) -> tuple[str, str, bool]:
    s = TextAssembler(CharTok(), stop)
    pieces = []
    for ch in text:
        pieces.append(s.push(ord(ch)))
        if s.stopped:
            break
    pieces.append(s.finish())
    return "".join(pieces), s.text, s.stopped


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="abc ", max_size=40), st.lists(st.text(alphabet="abc", min_size=1, max_size=4), max_size=3))
def test_streamed_text_equals_reference_truncation(text, stops):
    streamed, final, stopped = run(text, stops)
    hits = [text.find(s) for s in stops if s in text]
    # the earliest stop string that COMPLETES first ends the text before it
    if hits:
        ends = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
        first_end = min(e for e, _ in ends)
        seen = text[:first_end]
        cut = min(seen.find(s) for s in stops if s in seen)
        assert stopped and final == text[:cut]
    else:
        assert not stopped and final == text
    assert streamed == final


def test_holds_back_partial_stop_and_releases_at_end():
    s = TextAssembler(CharTok(), ["STOP"])
    assert s.push(ord("a")) == "a"
    assert s.push(ord("S")) == ""
    assert s.push(ord("T")) == ""
    assert s.finish() == "ST"


def test_incomplete_utf8_is_held_back():
    class ByteTok:
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    s = TextAssembler(ByteTok())
    euro = "€".encode()
    assert s.push(euro[0]) == ""
    assert s.push(euro[1]) == ""
    assert s.push(euro[2]) == "€"


@pytest.mark.parametrize("stop", [[""], [None]])
def test_bad_stop_strings(stop):
    with pytest.raises(InvalidInputError):
        TextAssembler(CharTok(), stop)
