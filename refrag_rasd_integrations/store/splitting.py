"""Documents into passages of at most ``passage_tokens`` decoder tokens: by blank lines, then lines, then
sentences, then words, packing neighbours greedily; a single word still too long is cut by tokens.

Kept over ``langchain-text-splitters``' ``RecursiveCharacterTextSplitter`` (and LlamaIndex's
``SentenceSplitter``) on a measurement (``docs/store.md``): on the demo corpus and ``docs/*.md`` it runs at a comparable
speed, loses no text, and is the only one that never exceeds the bound, because it measures each packed candidate
whole where the others add up the token counts of the pieces (a BPE tokenizer does not add up).

Example:
    >>> split_text("One. Two.\\n\\nThree four five.", len, 16)
    ['One. Two.', 'Three four five.']
"""

from __future__ import annotations

from typing import Any

from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.splitting import PassageSplitter, split_text

__all__ = ["DEFAULT_PASSAGE_TOKENS", "MAX_PASSAGE_TOKENS", "MIN_PASSAGE_TOKENS", "PassageSplitter",
           "check_passage_tokens", "split_text"]

DEFAULT_PASSAGE_TOKENS = 256
"""The passage length of a new collection when none is asked for."""
MIN_PASSAGE_TOKENS = 16
"""The shortest passage bound: one REFRAG chunk at the default k (see above)."""
MAX_PASSAGE_TOKENS = 1024
"""The longest passage bound: 4 passages, a question and an answer inside an 8,192-token window."""


def check_passage_tokens(n: Any) -> int:
    """``n`` if it is a whole number of tokens in [:data:`MIN_PASSAGE_TOKENS`, :data:`MAX_PASSAGE_TOKENS`],
    else :class:`InvalidInputError` saying why."""
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_PASSAGE_TOKENS <= n <= MAX_PASSAGE_TOKENS:
        raise InvalidInputError(
            f"passage_tokens must be between {MIN_PASSAGE_TOKENS} and {MAX_PASSAGE_TOKENS}, got {n!r} (at "
            "least one REFRAG chunk of 16 tokens; at most what leaves 4 passages, the question and the "
            "answer room in the model's window)")
    return n
