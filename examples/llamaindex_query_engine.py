"""FlashBack in a LlamaIndex query engine, offline: SmolLM2 answering from the Python documentation.

    python examples/llamaindex_query_engine.py
    python examples/llamaindex_query_engine.py --layout standard "How do generators work?"
    python examples/llamaindex_query_engine.py --fast          # a few tokens (what the test suite runs)

The corpus is the BM25 index over the standard library's docs that ``flashback demo`` builds (cached).
It is wrapped as a LlamaIndex retriever for the query engine, and FlashBackLLM re-retrieves from the
same index every ``--stride`` tokens while it writes the answer.

Layouts (see integrations/llama-index-llms-flashback/README.md):
- ``flashback`` (default): the prompt holds the question only; the query engine's nodes become the
  first appended passage block, replaced by a fresh retrieval every stride;
- ``standard``: LlamaIndex's usual prompt with the nodes stuffed before the question, plus FlashBack's
  appended re-retrieval while decoding.
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
    parser.add_argument("--layout", choices=("flashback", "standard"), default="flashback")
    parser.add_argument("--pattern", choices=("append", "prepend"), default=None,
                        help="default: the model's own (append for the shipped FlashBack model)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stride", type=int, default=None, help="default: the model's own (16)")
    parser.add_argument("--fast", action="store_true", help="8 tokens, a retrieval every 4")
    args = parser.parse_args(argv)
    if args.fast:
        args.max_new_tokens, args.stride = 8, 4

    from llama_index.core.query_engine import RetrieverQueryEngine

    from flashback_rag.demo import demo_index
    from llama_index.llms.flashback import (
        FLASHBACK_QA_PROMPT,
        FlashBackLLM,
        FlashBackNodePostprocessor,
        FlashBackRetriever,
    )

    # Only the settings given here override the model's own (a FlashBack model records its layout).
    layout = {k: v for k, v in (("pattern", args.pattern), ("stride", args.stride)) if v is not None}
    retriever = FlashBackRetriever(demo_index(), similarity_top_k=2)        # Python docs, BM25
    llm = FlashBackLLM(args.model if model is None else model, adapter=args.adapter, retriever=retriever,
                       **layout,
                       max_new_tokens=args.max_new_tokens, is_chat_model=True)
    if args.layout == "flashback":
        engine = RetrieverQueryEngine.from_args(retriever, llm=llm, text_qa_template=FLASHBACK_QA_PROMPT,
                                                node_postprocessors=[FlashBackNodePostprocessor()])
    else:
        engine = RetrieverQueryEngine.from_args(retriever, llm=llm)

    started = time.perf_counter()
    response = engine.query(args.question)
    seconds = time.perf_counter() - started
    result = llm.last_result

    print(f"Q: {args.question}\nA: {response.response.strip()}\n")
    print("query engine's nodes: " + ", ".join(n.node.metadata.get("title", "?") for n in response.source_nodes))
    print("passage blocks while decoding:")
    for record in result.retrievals:
        names = ", ".join(f"{p.title} [{p.id}]" for p in record.passages) or "(none)"
        print(f"  token {record.step:>3}: {names}   <- query ...{record.query[-40:]!r}")
    print(f"\n{result.stats.generated_tokens} tokens in {seconds:.2f}s "
          f"({result.stats.retrievals} retrievals, layout={args.layout}, pattern={llm.engine.config.pattern}, echo {llm.engine.config.echo_tokens})")
    return {"answer": response.response, "seconds": seconds, "retrievals": len(result.retrievals),
            "first_block": [p.id for p in result.retrievals[0].passages] if result.retrievals else [],
            "source_nodes": [n.node.node_id for n in response.source_nodes]}


if __name__ == "__main__":
    main()
