"""LangChain integration of flashback-rag: ``from langchain_flashback import FlashBackLLM``.

    >>> from langchain_flashback import ChatFlashBack, FlashBackLLM, FlashBackRetriever
    >>> FlashBackLLM.__name__, ChatFlashBack.__name__, FlashBackRetriever.__name__
    ('FlashBackLLM', 'ChatFlashBack', 'FlashBackRetriever')
"""

from langchain_flashback.chat_models import ChatFlashBack, messages_to_prompt
from langchain_flashback.embeddings import FlashBackEmbeddings
from langchain_flashback.llms import FlashBackLLM
from langchain_flashback.retrievers import (
    FlashBackRetriever,
    LangChainPassageRetriever,
    as_flashback_retriever,
    document_to_passage,
    passage_to_document,
)

__all__ = [
    "ChatFlashBack", "FlashBackEmbeddings", "FlashBackLLM", "FlashBackRetriever", "LangChainPassageRetriever",
    "as_flashback_retriever", "document_to_passage", "messages_to_prompt", "passage_to_document",
]
