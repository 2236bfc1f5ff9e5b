"""FlashBack's layout in a standard query engine: the question first, the retrieved nodes appended.

A LlamaIndex query engine normally stuffs the retrieved nodes in front of the question. With
:class:`FlashBackNodePostprocessor` and :data:`FLASHBACK_QA_PROMPT` the prompt holds the question only,
and the nodes become FlashBack's *first appended passage block* (between ``<MARK_L>``/``<MARK_R>``);
every ``stride`` tokens the LLM's own retriever replaces that block, and the question's KV cache is
kept throughout. :func:`as_flashback_query_engine` wires both in:

    >>> from flashback_rag.retrievers import BM25Retriever
    >>> from llama_index.core import Document, SummaryIndex
    >>> from llama_index.llms.flashback import FlashBackLLM, as_flashback_query_engine
    >>> bm25 = BM25Retriever.build(["Cats purr when content.", "Dogs bark at strangers."])
    >>> llm = FlashBackLLM("tiny-random-llama", retriever=bm25, stride=8, max_new_tokens=16)
    >>> index = SummaryIndex.from_documents([Document(text="Owls hunt at night.", id_="owls")])
    >>> engine = as_flashback_query_engine(index, llm, response_mode="simple_summarize")
    >>> response = engine.query("When do owls hunt?")
    >>> first = llm.last_result.retrievals[0]       # the query engine's node, appended first
    >>> first.step, [p.text for p in first.passages]
    (0, ['Owls hunt at night.'])

How the nodes travel: the postprocessor records them, with the question, in a context variable of the
running query (a thread, or an asyncio task and what it spawns); the LLM takes them when its prompt
contains that question. Concurrent queries therefore never see each other's nodes.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any, List, Optional

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.prompt_type import PromptType
from llama_index.core.schema import NodeWithScore, QueryBundle

from flashback_rag.errors import ConfigError
from flashback_rag.retrievers import Passage

from .retrievers import node_to_passage

# No {context_str}: the nodes are not stuffed into the prompt; they reach the model as the appended block.
FLASHBACK_QA_PROMPT = PromptTemplate(
    "Answer the question. Passages that may help are given after it.\n"
    "Question: {query_str}\n"
    "Answer:",
    prompt_type=PromptType.QUESTION_ANSWER,
)


@dataclass(frozen=True)
class Handoff:
    query: str
    passages: tuple[Passage, ...]


_HANDOFF: contextvars.ContextVar[Optional[Handoff]] = contextvars.ContextVar("flashback_handoff",
                                                                             default=None)


def hand_over(query: str, passages: list[Passage]) -> None:
    """Make ``passages`` the first block of this context's next FlashBack calls about ``query``."""
    _HANDOFF.set(Handoff(query.strip(), tuple(passages)) if query.strip() else None)


def pending_passages(prompt: str) -> Optional[list[Passage]]:
    """The passages handed over for the question this prompt contains, if any."""
    handoff = _HANDOFF.get()
    if handoff is None or handoff.query not in prompt:
        return None
    return list(handoff.passages)


class FlashBackNodePostprocessor(BaseNodePostprocessor):
    """Hands the query engine's nodes to ``FlashBackLLM`` as its first appended passage block.

    Put it last in ``node_postprocessors`` and use a prompt without ``{context_str}`` (such as
    :data:`FLASHBACK_QA_PROMPT`); the nodes are returned unchanged, so ``response.source_nodes`` and
    the synthesizer's bookkeeping stay as they were.
    """

    @classmethod
    def class_name(cls) -> str:
        return "FlashBackNodePostprocessor"

    def _postprocess_nodes(self, nodes: List[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        query = query_bundle.query_str if query_bundle is not None else ""
        hand_over(query, [node_to_passage(n, i) for i, n in enumerate(nodes)])
        return nodes

    async def _apostprocess_nodes(self, nodes: List[NodeWithScore],
                                  query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        # LlamaIndex's default runs _postprocess_nodes in a worker thread (asyncio.to_thread), in a copy of
        # the context that is thrown away afterwards: the hand-over would never reach the LLM and aquery
        # would silently retrieve on its own. Recording it is cheap, so it happens here, in the query's task.
        return self._postprocess_nodes(nodes, query_bundle)


def as_flashback_query_engine(index: Any, llm: Any, **kwargs: Any):
    """``index.as_query_engine(llm=llm, ...)`` with the FlashBack layout (question first, nodes appended).

    Other keyword arguments go to ``as_query_engine`` (``similarity_top_k``, ``streaming``...); extra
    ``node_postprocessors`` run before the hand-over.
    """
    post = [*(kwargs.pop("node_postprocessors", None) or []), FlashBackNodePostprocessor()]
    kwargs.setdefault("text_qa_template", FLASHBACK_QA_PROMPT)
    engine = index.as_query_engine(llm=llm, node_postprocessors=post, **kwargs)
    check_query_engine(engine, llm)
    return engine


# Tokens a packing template must leave for the question and some retrieved text; with less, LlamaIndex
# fails at query time once the question is added (its chunk size goes negative).
MIN_ROOM = 64


def check_query_engine(query_engine: Any, llm: Any) -> None:
    """Fail now, with the reason, when the query engine's prompts leave no room in the context window.

    LlamaIndex packs text into ``context_window - num_output - prompt tokens``. On a small model (512
    positions) with the default 256 new tokens and FlashBack's reserve for its appended block, the
    compact / refine templates leave a negative room and LlamaIndex fails at the first query with
    ``Chunk size -115 is not positive``; this says why, before any query. Templates need
    :data:`MIN_ROOM` tokens left; chat templates count only for a chat model (``is_chat_model``).
    """
    synth = getattr(query_engine, "_response_synthesizer", None)
    helper = getattr(synth, "_prompt_helper", None)
    if synth is None or helper is None or not hasattr(helper, "_get_available_chunk_size"):
        return
    meta = llm.metadata
    # refine and compact also keep a padding for the answer (500 tokens by default) when they pack.
    padding = getattr(synth, "_response_padding_size", 5)
    for name, template in synth.get_prompts().items():
        if name.startswith("chat_") and not meta.is_chat_model:
            continue
        room = helper._get_available_chunk_size(template, 1, padding=padding, llm=llm)
        if room < MIN_ROOM:
            engine = getattr(llm, "engine", None)
            positions = getattr(engine, "max_context", None)
            block = engine.config.max_block_tokens if engine is not None else 0
            raise ConfigError(
                f"{type(synth).__name__} ({name}) packs the question and retrieved text into the prompt, but "
                f"too little room is left (under {MIN_ROOM} tokens): "
                f"context_window {meta.context_window} (the model's {positions} positions minus {block} kept for "
                f"FlashBack's passage block) - num_output {meta.num_output} (max_new_tokens) - the template - "
                f"LlamaIndex's padding of {padding} leaves {room} tokens. Lower max_new_tokens, doc_tokens or "
                "top_k, use a model with more positions, or "
                "response_mode='simple_summarize' with FlashBack's hand-over (the nodes are appended, not packed)")
