"""Retriever adapters both ways between LlamaIndex and flashback-rag.

- :class:`FlashBackRetriever`: a flashback-rag retriever or index folder as a LlamaIndex ``BaseRetriever``
  (use it in any query engine);
- :class:`LlamaIndexPassageRetriever`: any LlamaIndex retriever (``index.as_retriever()``) as a
  flashback-rag retriever, so the engine re-retrieves from it while it decodes.

    >>> from flashback_rag.retrievers import BM25Retriever
    >>> from llama_index.llms.flashback import FlashBackRetriever, LlamaIndexPassageRetriever
    >>> bm25 = BM25Retriever.build(["Paris is the capital of France.", "Rome is in Italy."],
    ...                            titles=["France", "Italy"])
    >>> li = FlashBackRetriever(bm25, similarity_top_k=1)
    >>> node = li.retrieve("capital of France")[0]
    >>> node.node.metadata["title"], node.node.get_content()
    ('France', 'Paris is the capital of France.')
    >>> LlamaIndexPassageRetriever(li).retrieve("Rome", k=1)[0].title    # and back again
    'Italy'
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

from flashback_rag.retrievers import Passage, Retriever

TITLE_KEYS = ("title", "file_name", "doc_title")


def node_to_passage(node: NodeWithScore | BaseNode, rank: int = 0) -> Passage:
    """A LlamaIndex node (scored or not) as a Passage: its text without metadata, a title if it has one."""
    score = getattr(node, "score", None)
    base = node.node if isinstance(node, NodeWithScore) else node
    metadata = base.metadata or {}
    title = next((str(metadata[k]) for k in TITLE_KEYS if metadata.get(k)), "")
    return Passage(id=str(base.node_id or rank), text=base.get_content(metadata_mode=MetadataMode.NONE),
                   title=title, score=float(score or 0.0))


def passage_to_node(passage: Passage) -> NodeWithScore:
    metadata = {"title": passage.title} if passage.title else {}
    return NodeWithScore(node=TextNode(id_=passage.id, text=passage.text, metadata=metadata),
                         score=passage.score)


class LlamaIndexPassageRetriever:
    """A LlamaIndex retriever seen through flashback-rag's ``retrieve(query, k) -> list[Passage]``.

    The LlamaIndex retriever decides how many nodes it returns (``similarity_top_k``); the first ``k``
    are kept.
    """

    def __init__(self, retriever: BaseRetriever) -> None:
        self.retriever = retriever

    def retrieve(self, query: str, k: int) -> list[Passage]:
        nodes = self.retriever.retrieve(QueryBundle(query_str=query))
        return [node_to_passage(n, i) for i, n in enumerate(nodes[:k])]

    def __repr__(self) -> str:
        return f"LlamaIndexPassageRetriever({type(self.retriever).__name__})"


class FlashBackRetriever(BaseRetriever):
    """A flashback-rag retriever (or an index folder path) as a LlamaIndex retriever."""

    def __init__(self, retriever: Retriever | str | os.PathLike, similarity_top_k: int = 2,
                 callback_manager: Optional[CallbackManager] = None, verbose: bool = False) -> None:
        if isinstance(retriever, (str, os.PathLike)):
            from flashback_rag.retrievers import load_index

            retriever = load_index(retriever)
        self.flashback_retriever = retriever
        self.similarity_top_k = similarity_top_k
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        passages = self.flashback_retriever.retrieve(query_bundle.query_str, self.similarity_top_k)
        return [passage_to_node(p) for p in passages]


def as_flashback_retriever(obj: Any) -> Any:
    """What the engine can use: LlamaIndex retrievers (and indexes) are wrapped, the rest passes on."""
    if obj is None or isinstance(obj, (str, os.PathLike)):
        return obj
    if isinstance(obj, FlashBackRetriever):
        return obj.flashback_retriever          # skip the round trip through nodes
    if isinstance(obj, BaseRetriever):
        return LlamaIndexPassageRetriever(obj)
    if callable(getattr(obj, "as_retriever", None)) and not callable(getattr(obj, "retrieve", None)):
        return LlamaIndexPassageRetriever(obj.as_retriever())    # an index: its default retriever
    if callable(getattr(obj, "retrieve", None)):
        return obj
    raise TypeError(f"cannot retrieve with a {type(obj).__name__}: pass a LlamaIndex retriever or index, "
                    "a flashback-rag retriever, or an index folder path")
