"""flashback-rag: retrieval-augmented generation whose KV cache survives re-retrieval (FlashBack).

    >>> from flashback_rag import FlashBack, FlashBackConfig, load_model
    >>> from flashback_rag.retrievers import BM25Retriever
    >>> model, tokenizer = load_model("tiny-random-llama")
    >>> fb = FlashBack(model, tokenizer, BM25Retriever.build(["a passage about cats"]),
    ...                FlashBackConfig(pattern="append", stride=8))
    >>> len(fb.generate("cats", max_new_tokens=4, ignore_eos=True).token_ids)
    4
"""

from .config import FlashBackConfig
from .decoding import FlashBack, TextStream
from .errors import FlashBackError
from .models import add_marker_tokens, load_model
from .results import GenerationResult, GenerationStats, RetrievalRecord

__version__ = "0.1.0"

__all__ = [
    "FlashBack", "FlashBackConfig", "FlashBackError", "GenerationResult", "GenerationStats",
    "RetrievalRecord", "TextStream", "add_marker_tokens", "load_model", "__version__",
]
