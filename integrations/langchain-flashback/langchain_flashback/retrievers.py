"""Retriever adapters both ways between LangChain and flashback-rag.

- :class:`FlashBackRetriever`: a flashback-rag retriever or index folder as a LangChain retriever;
- :class:`LangChainPassageRetriever`: any LangChain retriever (or vector store) as a flashback-rag
  retriever, so the engine re-retrieves from it while it decodes.

    >>> from flashback_rag.retrievers import BM25Retriever
    >>> from langchain_flashback import FlashBackRetriever, LangChainPassageRetriever
    >>> bm25 = BM25Retriever.build(["Paris is the capital of France.", "Rome is in Italy."],
    ...                            titles=["France", "Italy"])
    >>> docs = FlashBackRetriever(retriever=bm25, k=1).invoke("capital of France")
    >>> docs[0].page_content, docs[0].metadata["title"]
    ('Paris is the capital of France.', 'France')
    >>> LangChainPassageRetriever(FlashBackRetriever(retriever=bm25)).retrieve("Rome", k=1)[0].title
    'Italy'
"""

from __future__ import annotations

import os
from typing import Any, List

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, model_validator

from flashback_rag.retrievers import Passage

TITLE_KEYS = ("title", "source")


def document_to_passage(doc: Document, rank: int = 0) -> Passage:
    metadata = doc.metadata or {}
    title = next((str(metadata[k]) for k in TITLE_KEYS if metadata.get(k)), "")
    ident = doc.id or metadata.get("id") or rank
    score = metadata.get("score", 0.0)
    return Passage(id=str(ident), text=doc.page_content, title=title,
                   score=float(score) if isinstance(score, (int, float)) else 0.0)


def passage_to_document(passage: Passage) -> Document:
    metadata = {"id": passage.id, "score": passage.score}
    if passage.title:
        metadata["title"] = passage.title
    return Document(page_content=passage.text, metadata=metadata, id=passage.id)


class LangChainPassageRetriever:
    """A LangChain retriever seen through flashback-rag's ``retrieve(query, k) -> list[Passage]``.

    The LangChain retriever decides how many documents it returns; the first ``k`` are kept.
    """

    def __init__(self, retriever: BaseRetriever) -> None:
        self.retriever = retriever

    def retrieve(self, query: str, k: int) -> list[Passage]:
        docs = self.retriever.invoke(query)
        return [document_to_passage(d, i) for i, d in enumerate(docs[:k])]

    def __repr__(self) -> str:
        return f"LangChainPassageRetriever({type(self.retriever).__name__})"


class FlashBackRetriever(BaseRetriever):
    """A flashback-rag retriever (or an index folder path) as a LangChain retriever."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any = Field(description="a flashback-rag retriever or an index folder path")
    k: int = Field(default=4, gt=0, description="passages per query")

    @model_validator(mode="after")
    def _load_folder(self) -> "FlashBackRetriever":
        if isinstance(self.retriever, (str, os.PathLike)):
            from flashback_rag.retrievers import load_index

            self.retriever = load_index(self.retriever)
        return self

    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun) -> List[Document]:
        return [passage_to_document(p) for p in self.retriever.retrieve(query, self.k)]


def as_flashback_retriever(obj: Any) -> Any:
    """What the engine can use: LangChain retrievers (and vector stores) are wrapped, the rest passes on."""
    if obj is None or isinstance(obj, (str, os.PathLike)):
        return obj
    if isinstance(obj, FlashBackRetriever):
        return obj.retriever                  # skip the round trip through Documents
    if isinstance(obj, BaseRetriever):
        return LangChainPassageRetriever(obj)
    if callable(getattr(obj, "as_retriever", None)) and not callable(getattr(obj, "retrieve", None)):
        return LangChainPassageRetriever(obj.as_retriever())    # a vector store
    if callable(getattr(obj, "retrieve", None)):
        return obj
    raise TypeError(f"cannot retrieve with a {type(obj).__name__}: pass a LangChain retriever or vector "
                    "store, a flashback-rag retriever, or an index folder path")
