"""LlamaIndex metadata filters as a Chroma ``where`` filter.

Example:
    >>> from llama_index.core.vector_stores import MetadataFilter, MetadataFilters
    >>> chroma_where(MetadataFilters(filters=[MetadataFilter(key="source", value="faq.md"),
    ...                                       MetadataFilter(key="year", value=2020, operator=">=")]))
    {'$and': [{'source': {'$eq': 'faq.md'}}, {'year': {'$gte': 2020}}]}
"""

from __future__ import annotations

from typing import Any

from refrag_rasd_core.errors import InvalidInputError

__all__ = ["chroma_where"]

_OPERATORS = {"==": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte", "in": "$in",
              "nin": "$nin"}


def chroma_where(filters: Any) -> dict[str, Any] | None:
    """A Chroma ``where`` dict from LlamaIndex ``MetadataFilters`` (EQ / NE / GT / GTE / LT / LTE / IN / NIN,
    AND / OR) or a ``where`` dict given as is."""
    if filters is None or isinstance(filters, dict):
        return filters or None
    parts = []
    for f in filters.filters:
        if hasattr(f, "filters"):
            parts.append(chroma_where(f))
            continue
        op = _OPERATORS.get(getattr(f.operator, "value", str(f.operator)))
        if op is None:
            raise InvalidInputError(f"filter operator {f.operator} is not supported by the Chroma store")
        parts.append({f.key: {op: f.value}})
    if len(parts) == 1:
        return parts[0]
    cond = getattr(filters.condition, "value", str(filters.condition)).lower()
    return {"$or" if cond == "or" else "$and": parts}
