"""refrag-rasd integrations: LangChain / LlamaIndex / Chroma adapters and the ``refrag-rasd`` command over
the framework-free engine in :mod:`refrag_rasd_core`."""

from refrag_rasd_core import __version__
from refrag_rasd_core.engine import Engine, GenerationConfig

__all__ = ["Engine", "GenerationConfig", "__version__"]
