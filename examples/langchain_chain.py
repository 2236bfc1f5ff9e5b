"""FlashBack in a LangChain RAG chain, offline: SmolLM2 answering from the Python documentation.

    python examples/langchain_chain.py
    python examples/langchain_chain.py "How do I define a class?"
    python examples/langchain_chain.py --fast          # a few tokens (what the test suite runs)

The chain is plain LCEL: ``{"context": retriever | join, "question": passthrough} | prompt | llm |
StrOutputParser()``. Its retriever (the cached BM25 index over the standard library's docs, as a
LangChain retriever) is also FlashBackLLM's re-retriever, so while the answer streams out the model
sees a fresh passage every ``--stride`` tokens, appended after the text with its KV cache kept.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

DEFAULT_QUESTION = "What does the with statement do?"


def main(argv: list[str] | None = None, model: Any = None) -> dict[str, Any]:
    """Run the example; ``model`` may be an already loaded ``(model, tokenizer)`` pair to reuse."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--model", default="smollm2-135m-flashback",
                        help="a FlashBack model (its recorded layout is the default) or a base model")
    parser.add_argument("--adapter", default=None, help="a FlashBack adapter folder for the model")
    parser.add_argument("--pattern", choices=("append", "prepend"), default=None,
                        help="default: the model's own (append for the shipped FlashBack model)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stride", type=int, default=None, help="default: the model's own (16)")
    parser.add_argument("--fast", action="store_true", help="8 tokens, a retrieval every 4")
    args = parser.parse_args(argv)
    if args.fast:
        args.max_new_tokens, args.stride = 8, 4

    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from flashback_rag.demo import demo_index
    from langchain_flashback import FlashBackLLM, FlashBackRetriever

    # Only the settings given here override the model's own (a FlashBack model records its layout).
    layout = {k: v for k, v in (("pattern", args.pattern), ("stride", args.stride)) if v is not None}
    retriever = FlashBackRetriever(retriever=demo_index(), k=1)          # Python docs, BM25
    llm = FlashBackLLM(model=args.model if model is None else model, adapter=args.adapter,
                       retriever=retriever, **layout,
                       max_new_tokens=args.max_new_tokens)
    prompt = PromptTemplate.from_template(
        "Use the documentation to answer.\n\n{context}\n\nQuestion: {question}\nAnswer:")
    chain = ({"context": retriever | (lambda docs: "\n\n".join(d.page_content for d in docs)),
              "question": RunnablePassthrough()} | prompt | llm | StrOutputParser())

    print(f"Q: {args.question}\nA: ", end="", flush=True)
    started = time.perf_counter()
    chunks = []
    for chunk in chain.stream(args.question):
        chunks.append(chunk)
        print(chunk, end="", flush=True)
    seconds = time.perf_counter() - started
    result = llm.last_result

    print("\n\npassage blocks while decoding:")
    for record in result.retrievals:
        names = ", ".join(f"{p.title} [{p.id}]" for p in record.passages) or "(none)"
        print(f"  token {record.step:>3}: {names}   <- query ...{record.query[-40:]!r}")
    print(f"\n{result.stats.generated_tokens} tokens in {seconds:.2f}s "
          f"({result.stats.retrievals} retrievals, {len(chunks)} streamed chunks, pattern={llm.engine.config.pattern}, echo {llm.engine.config.echo_tokens})")
    return {"answer": "".join(chunks), "seconds": seconds, "retrievals": len(result.retrievals),
            "chunks": len(chunks)}


if __name__ == "__main__":
    main()
