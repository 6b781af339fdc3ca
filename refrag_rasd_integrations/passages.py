"""Passages with their stored arrays, and the in-process registry that lets LangChain / LlamaIndex objects
refer to them by a small handle.

A retriever hands the frameworks ``Document`` s / nodes whose metadata carries a *handle*
(``"<collection>/<passage id>"``) instead of the token ids and float16 chunk embeddings: traces, callbacks and
prompt templates stay small. The :class:`PassageRegistry` keeps the last few thousand :class:`Passage` objects
handed out (an LRU), so the model resolves a handle back to its arrays without touching the store again.

Example:
    >>> from refrag_rasd_integrations.passages import PASSAGES, Passage
    >>> h = PASSAGES.put(Passage(text="Paris is in France.", id="p1"), collection="demo")
    >>> h, PASSAGES.get(h).text
    ('demo/p1', 'Paris is in France.')
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from refrag_rasd_core.refrag import Passage

TOKENS_KEY = "refrag_tokens"
"""Stored record metadata: the passage's decoder token ids (base64)."""
CHUNKS_KEY = "refrag_chunks"
"""Stored record metadata: the passage's REFRAG chunk embeddings (base64 float16)."""
N_TOKENS_KEY = "refrag_n_tokens"
"""Stored record metadata: how many tokens the passage has."""
INDEX_KEY = "refrag_index"
"""Stored record metadata: the passage's index within its document."""
DOC_KEY = "refrag_doc"
"""Stored record metadata: the id of the document the passage was split from."""
SOURCE_KEY = "source"
"""The metadata key naming a passage's source (the user's, or set from the document)."""
STORE_KEYS = frozenset({TOKENS_KEY, CHUNKS_KEY, N_TOKENS_KEY, INDEX_KEY, DOC_KEY})
"""The store's own keys in a record's metadata (never the user's)."""
HANDLE_KEY = "refrag_passage"
"""Metadata key of a retrieved ``Document`` / node that holds its passage handle."""
MESSAGE_KEY = "refrag_passages"
"""``additional_kwargs`` key of a chat message that lists the passage handles it carries."""


class PassageRegistry:
    """A thread-safe LRU of passages by handle (``"<collection>/<id>"``).

    Example:
        >>> reg = PassageRegistry(maxsize=2)
        >>> reg.put(Passage(text="a", id="1"), "c")
        'c/1'
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, Passage] = OrderedDict()
        self._by_text: dict[str, str] = {}  # stripped text -> handle of the latest passage with that text
        self._lock = threading.Lock()

    def put(self, passage: Passage, collection: str) -> str:
        """Remember ``passage`` and return its handle."""
        handle = f"{collection}/{passage.id}"
        with self._lock:
            old = self._items.get(handle)
            if old is not None and self._by_text.get(old.text.strip()) == handle:
                del self._by_text[old.text.strip()]
            self._items[handle] = passage
            self._items.move_to_end(handle)
            self._by_text[passage.text.strip()] = handle
            while len(self._items) > self.maxsize:
                gone, p = self._items.popitem(last=False)
                if self._by_text.get(p.text.strip()) == gone:
                    del self._by_text[p.text.strip()]
        return handle

    def match(self, text: str) -> Passage | None:
        """The latest passage handed out whose text is ``text`` (leading and trailing whitespace aside): how a
        plain ``Document`` (a LangChain ``VectorStoreRetriever``'s, no handle in its metadata) finds its
        stored arrays.

        Example:
            >>> reg = PassageRegistry()
            >>> _ = reg.put(Passage(text="Paris is in France.", id="p1"), "demo")
            >>> reg.match(" Paris is in France.").id, reg.match("Paris")
            ('p1', None)
        """
        with self._lock:
            handle = self._by_text.get(text.strip())
            return self._items.get(handle) if handle else None

    def get(self, handle: str) -> Passage | None:
        with self._lock:
            p = self._items.get(handle)
            if p is not None:
                self._items.move_to_end(handle)
            return p

    def find_in(self, text: str, min_chars: int = 24) -> list[tuple[str, Passage]]:
        """The registered passages whose text occurs verbatim in ``text``, in the order they occur (one per
        distinct text: the most recently handed out). A passage found only inside a longer one found there
        (a smaller split of the same document, from another store) is left out: each span of ``text`` is
        one passage.

        Example:
            >>> reg = PassageRegistry()
            >>> _ = reg.put(Passage(text="Madrid is the capital of Spain.", id="small"), "a")
            >>> _ = reg.put(Passage(text="Madrid is the capital of Spain. It has the Prado.", id="whole"), "b")
            >>> [p.id for _, p in reg.find_in("Context: Madrid is the capital of Spain. It has the Prado. Q?")]
            ['whole']
        """
        with self._lock:
            items = list(self._items.items())
        found: dict[str, tuple[int, str, Passage]] = {}
        for handle, p in reversed(items):  # most recently handed out first: it wins for a repeated text
            t = p.text.strip()
            if len(t) >= min_chars and t not in found:
                pos = text.find(t)
                if pos >= 0:
                    found[t] = (pos, handle, p)
        spans: list[tuple[int, int]] = []
        kept = []
        for t, (pos, handle, p) in sorted(found.items(), key=lambda x: -len(x[0])):  # longest first
            end = pos + len(t)
            if not any(pos >= a and end <= b for a, b in spans):
                spans.append((pos, end))
                kept.append((pos, handle, p))
        return [(h, p) for _, h, p in sorted(kept, key=lambda x: x[0])]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._by_text.clear()

    def __len__(self) -> int:
        return len(self._items)


PASSAGES = PassageRegistry()
"""The process-wide registry every retriever writes to and every model reads from."""


def handles_of(items: Iterable[Any]) -> list[str]:
    """Passage handles of ``Document`` s / nodes / ``NodeWithScore`` s / handle strings (others skipped)."""
    out: list[str] = []
    for it in items:
        if isinstance(it, str):
            out.append(it)
            continue
        node = getattr(it, "node", it)
        meta = getattr(node, "metadata", None) or {}
        h = meta.get(HANDLE_KEY)
        if isinstance(h, str):
            out.append(h)
    return out


def resolve(items: Sequence[Any] | None, store: Any = None, registry: PassageRegistry | None = None
            ) -> list[Passage]:
    """Turn handles, ``Document`` s, nodes, :class:`Passage` s or strings into :class:`Passage` s.

    A handle is looked up in the registry, then in ``store`` (a :class:`~.store.RefragChromaStore`) when one
    is given. A document or node without a handle (or a plain string) is matched by its text against
    the passages the stores handed out in this process (:meth:`PassageRegistry.match`); one that matches
    nothing becomes a text-only passage (the engine then encodes it on the fly, the slow path).
    """
    from .errors import PassageNotFoundError

    reg = registry or PASSAGES

    def lookup(handle: str) -> Passage | None:
        p = reg.get(handle)
        if p is None and store is not None:
            got = store.get_passages([handle])
            p = got[0] if got else None
        return p

    out: list[Passage] = []
    for it in items or []:
        if isinstance(it, Passage):
            out.append(it)
            continue
        if isinstance(it, str):
            if not is_handle(it):
                out.append(reg.match(it) or Passage(text=it))
                continue
            p = lookup(it)
            if p is None:
                raise PassageNotFoundError(
                    f"passage handle {it!r} is neither in this process's registry nor in the store; give the "
                    "model store= to fetch it, or pass the passages themselves")
            out.append(p)
            continue
        handle = (handles_of([it]) or [None])[0]
        p = lookup(handle) if handle else None
        if p is not None:
            out.append(p)
            continue
        node = getattr(it, "node", it)
        text = getattr(node, "page_content", None)
        if text is None:
            text = node.get_content() if hasattr(node, "get_content") else getattr(node, "text", None)
        if text is None:
            from refrag_rasd_core.errors import InvalidInputError

            raise InvalidInputError(f"cannot make a passage of {type(it).__name__}")
        out.append(reg.match(text) or Passage(text=text, metadata=dict(getattr(node, "metadata", {}) or {})))
    return out


def is_handle(s: str) -> bool:
    """Whether ``s`` looks like a passage handle (``"<collection>/<id>"``, no whitespace)."""
    return "/" in s and not any(c.isspace() for c in s) and len(s) < 300


__all__ = ["HANDLE_KEY", "MESSAGE_KEY", "PASSAGES", "Passage", "PassageRegistry", "handles_of", "is_handle", "resolve"]
