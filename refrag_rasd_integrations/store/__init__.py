"""The Chroma store: documents -> passages -> (retrieval vector, decoder token ids, REFRAG chunk embeddings), in
a Chroma collection, embedded or behind a ``chroma run`` server.

Per passage (at most ``passage_tokens`` decoder tokens) the record holds the text (Chroma's ``documents``),
the user's metadata (flattened to Chroma's types), a normalized retrieval vector (sentence-transformers,
cosine space; we always pass our own vectors: Chroma's default embedding function would download a model),
and the arrays as base64 blobs in the metadata: ``refrag_tokens`` (the token ids) and ``refrag_chunks`` (one
float16 vector per k-token chunk, before projection). Why blobs (measured, ``docs/store.md``): Chroma metadata
takes no bytes or arrays, lists of floats are ~40x slower to write, and a sidecar file would not travel to a
``chroma run`` server; a blob round-trips bit-exact and one ``query`` returns the passage with its arrays.

The modules, one job each:

* :mod:`~.chroma_store`: :class:`RefragChromaStore`, the collection (framework-free);
* :mod:`~.client`: where the database is (:func:`chroma_dir`, :func:`make_client`);
* :mod:`~.server`: a ``chroma run`` child process (:class:`ChromaServer`);
* :mod:`~.records`: a passage as a Chroma record (base64 arrays, flat metadata, ids);
* :mod:`~.configuration`: what a collection records about its build, and the check on opening;
* :mod:`~.splitting`: documents into passages of at most ``passage_tokens`` tokens (16 to 1024);
* :mod:`~.documents`: what can be indexed (framework documents, pairs, strings, files; binary files skipped);
* :mod:`~.sources`: source ids (a file's resolved path) and the clean-up modes of re-indexing;
* :mod:`~.indexing`: writing the missing passages a batch at a time, deleting, :class:`IndexReport`;
* :mod:`~.embedder`: the default retrieval embedder; :mod:`~.errors`: Chroma failures as typed errors.

The LangChain and LlamaIndex faces (:class:`~refrag_rasd_integrations.langchain.RefragVectorStore`,
:class:`~refrag_rasd_integrations.llama_index.RefragLlamaVectorStore`) wrap the store; it never imports them
at import time.

Example:
    >>> from refrag_rasd_integrations.store import RefragChromaStore
    >>> store = RefragChromaStore("wiki")                       # doctest: +REAL_MODEL
    >>> store.add_texts(["Paris is the capital of France.", "Rome is in Italy."]).added  # doctest: +REAL_MODEL
    2
    >>> [p.text for p, score in store.search("capital of France", k=1)]                  # doctest: +REAL_MODEL
    ['Paris is the capital of France.']
"""

from ..passages import (
    CHUNKS_KEY,
    DOC_KEY,
    HANDLE_KEY,
    INDEX_KEY,
    N_TOKENS_KEY,
    SOURCE_KEY,
    TOKENS_KEY,
    Passage,
)
from .chroma_store import DEFAULT_COLLECTION, RefragChromaStore
from .client import chroma_dir, make_client, parse_chroma_url
from .configuration import check_collection, collection_metadata
from .corpus_datastore import CorpusDatastore, default_datastore_dir
from .documents import (
    TEXT_SUFFIXES,
    binary_reason,
    document_parts,
    iter_file_documents,
    jsonl_objects,
    passage_records,
)
from .embedder import DEFAULT_EMBEDDER, default_embedder
from .errors import chroma_failure
from .indexing import IndexReport
from .records import (
    LAYOUT,
    PassageRecord,
    decode_array,
    encode_array,
    flat_metadata,
    token_dtype_for,
    user_metadata,
)
from .server import ChromaServer, chroma_executable, free_port
from .sources import CLEANUP_MODES, file_source
from .splitting import (
    MAX_PASSAGE_TOKENS,
    MIN_PASSAGE_TOKENS,
    PassageSplitter,
    check_passage_tokens,
    split_text,
)

__all__ = ["CHUNKS_KEY", "CLEANUP_MODES", "DEFAULT_COLLECTION", "DEFAULT_EMBEDDER", "DOC_KEY", "HANDLE_KEY",
           "CorpusDatastore", "default_datastore_dir",
           "INDEX_KEY", "LAYOUT", "MAX_PASSAGE_TOKENS", "MIN_PASSAGE_TOKENS", "N_TOKENS_KEY", "SOURCE_KEY",
           "TEXT_SUFFIXES", "TOKENS_KEY", "ChromaServer", "IndexReport", "Passage", "PassageRecord",
           "PassageSplitter", "RefragChromaStore", "binary_reason", "check_collection",
           "check_passage_tokens", "chroma_dir", "chroma_executable", "chroma_failure", "collection_metadata",
           "decode_array", "default_embedder", "document_parts", "encode_array", "file_source",
           "flat_metadata", "free_port", "iter_file_documents", "jsonl_objects", "make_client",
           "parse_chroma_url", "passage_records", "split_text", "token_dtype_for", "user_metadata"]
