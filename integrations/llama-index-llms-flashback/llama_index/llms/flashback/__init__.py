"""LlamaIndex integration of flashback-rag: ``from llama_index.llms.flashback import FlashBackLLM``.

    >>> from llama_index.llms.flashback import FlashBackLLM, FlashBackNodePostprocessor
    >>> FlashBackLLM.class_name(), FlashBackNodePostprocessor.class_name()
    ('FlashBackLLM', 'FlashBackNodePostprocessor')
"""

from llama_index.llms.flashback.base import FlashBackLLM, RawResult, chat_template_prompt, result_summary
from llama_index.llms.flashback.embeddings import FlashBackEmbedding
from llama_index.llms.flashback.handoff import (
    FLASHBACK_QA_PROMPT,
    FlashBackNodePostprocessor,
    as_flashback_query_engine,
    check_query_engine,
    hand_over,
)
from llama_index.llms.flashback.retrievers import (
    FlashBackRetriever,
    LlamaIndexPassageRetriever,
    as_flashback_retriever,
    node_to_passage,
    passage_to_node,
)

__all__ = [
    "FLASHBACK_QA_PROMPT", "FlashBackEmbedding", "FlashBackLLM", "FlashBackNodePostprocessor", "FlashBackRetriever",
    "LlamaIndexPassageRetriever", "as_flashback_query_engine", "as_flashback_retriever", "check_query_engine",
    "RawResult", "chat_template_prompt", "hand_over", "node_to_passage", "passage_to_node", "result_summary",
]
