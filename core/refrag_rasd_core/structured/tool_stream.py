"""Tool calls read while the answer streams: :class:`ToolCallStream` turns text pieces into events, so a
framework can stream a call's name first and its arguments as they are written (LangChain's
``tool_call_chunks``, OpenAI's ``delta.tool_calls``) while text around the calls streams as text.

Example:
    >>> s = ToolCallStream()
    >>> events = [e for piece in ['Hi <tool', '_call>\\n{"name": "add", "arguments": {"a"', ': 2}}\\n</tool_call>']
    ...           for e in s.push(piece)] + s.finish()
    >>> [(e.kind, e.text) for e in events]
    [('text', 'Hi '), ('call', 'add'), ('args', '{"a"'), ('args', ': 2}'), ('end', '')]
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from .tool_calls import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

__all__ = ["ToolCallEvent", "ToolCallStream"]

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([^"\\]+)"\s*,\s*"arguments"\s*:\s*', re.DOTALL)
_TAIL = re.compile(r"\}(\s*)(.*)", re.DOTALL)
_CLOSE = re.compile(r"\}\s*" + re.escape(TOOL_CALL_CLOSE))
MAX_HEAD = 256
"""Characters after ``<tool_call>`` within which the call's name must be read; past that it is text."""


@dataclass
class ToolCallEvent:
    """``kind``: ``text`` (answer text), ``call`` (a call starts: ``text`` is its name), ``args`` (a piece of
    its arguments' JSON) or ``end`` (the call is complete). ``index``, ``call_id``: which call."""

    kind: str
    text: str = ""
    index: int = 0
    call_id: str = ""


class ToolCallStream:
    """The incremental reader (see the module docstring). Feed it pieces with :meth:`push`; :meth:`finish`
    flushes what it held back (a partial marker, an unfinished call)."""

    def __init__(self) -> None:
        self._buf = ""
        self._state = "text"
        self.calls = 0
        self._id = ""
        self._fresh = False

    def push(self, piece: str) -> list[ToolCallEvent]:
        self._buf += piece
        out: list[ToolCallEvent] = []
        while True:
            before = (self._state, len(self._buf), len(out))
            getattr(self, f"_{self._state}")(out)
            if (self._state, len(self._buf), len(out)) == before:
                return out

    def finish(self) -> list[ToolCallEvent]:
        """The rest: held-back text, or the arguments of a call the answer did not close."""
        out: list[ToolCallEvent] = []
        if self._buf:
            kind = "args" if self._state == "args" else "text"
            text = self._buf if kind == "args" else (TOOL_CALL_OPEN if self._state == "head" else "") + self._buf
            out.append(self._event(kind, text))
        self._buf = ""
        return out

    def _event(self, kind: str, text: str = "") -> ToolCallEvent:
        return ToolCallEvent(kind, text, self.calls, self._id)

    def _text(self, out: list[ToolCallEvent]) -> None:
        at = self._buf.find(TOOL_CALL_OPEN)
        if at >= 0:
            if at:
                out.append(self._event("text", self._buf[:at]))
            self._buf = self._buf[at + len(TOOL_CALL_OPEN):]
            self._state = "head"
            return
        keep = next((n for n in range(min(len(TOOL_CALL_OPEN) - 1, len(self._buf)), 0, -1)
                     if TOOL_CALL_OPEN.startswith(self._buf[-n:])), 0)  # a marker may be starting
        if len(self._buf) > keep:
            out.append(self._event("text", self._buf[:len(self._buf) - keep]))
            self._buf = self._buf[len(self._buf) - keep:]

    def _head(self, out: list[ToolCallEvent]) -> None:
        m = _HEAD.match(self._buf)
        if m:
            self._id = f"call_{uuid.uuid4().hex[:24]}"
            out.append(self._event("call", m.group(1)))
            self._buf = self._buf[m.end():]
            self._state, self._fresh = "args", True
        elif len(self._buf) > MAX_HEAD:  # not a call after all
            out.append(self._event("text", TOOL_CALL_OPEN + self._buf))
            self._buf, self._state = "", "text"

    def _args(self, out: list[ToolCallEvent]) -> None:
        if self._fresh:  # the whitespace before the arguments' JSON is not part of it
            self._buf = self._buf.lstrip()
            if not self._buf:
                return
            self._fresh = False
        end = _CLOSE.search(self._buf)
        if end is not None:  # the call's closing brace and marker
            if end.start():
                out.append(self._event("args", self._buf[:end.start()]))
            out.append(self._event("end"))
            self._buf, self._state = self._buf[end.end():], "text"
            self.calls += 1
            return
        at = self._buf.rfind("}")
        tail = _TAIL.fullmatch(self._buf[at:]) if at >= 0 else None
        held = at if tail is not None and TOOL_CALL_CLOSE.startswith(tail.group(2)) else len(self._buf)
        if held:
            out.append(self._event("args", self._buf[:held]))
            self._buf = self._buf[held:]
