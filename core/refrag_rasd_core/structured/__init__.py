"""Structured output: answers that follow a JSON schema, a regex, a choice or a grammar, and tool calls,
decoded under xgrammar's masks and composed with every speculative method (greedy output equals constrained
plain decoding's). :class:`ResponseFormat` says what shape; :mod:`.constraint` enforces it; :mod:`.tool_calls`
puts tools in the prompt and reads calls back.

Example:
    >>> from refrag_rasd_core.structured import ResponseFormat
    >>> ResponseFormat.of({"type": "json_object"}).kind
    'json_object'
"""

from .response_format import KINDS, ResponseFormat, json_schema_of
from .tool_calls import normalize_tool_choice, normalize_tools, parse_tool_calls, render_tool_messages, tool_call_format

__all__ = ["KINDS", "ResponseFormat", "json_schema_of", "normalize_tool_choice", "normalize_tools",
           "parse_tool_calls", "render_tool_messages", "tool_call_format"]
