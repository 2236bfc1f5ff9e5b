"""Quick start: FlashBack (append) on SmolLM2 over the Python documentation, fully offline.

    python examples/quickstart.py                      # 64 new tokens, re-retrieval every 16
    python examples/quickstart.py --max-new-tokens 16  # what the test suite runs

Builds (once, cached) the BM25 index the demo uses, streams a continuation, then prints the passages
that were retrieved along the way and the timings.
"""

import argparse

from flashback_rag import FlashBack, FlashBackConfig, load_model
from flashback_rag.demo import demo_index
from flashback_rag.retrievers import load_index


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt", default="Python's with statement calls the context manager's __enter__ method")
    args = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m")
    retriever = load_index(demo_index())
    fb = FlashBack(model, tokenizer, retriever,
                   FlashBackConfig(pattern="append", stride=16, query_tokens=32, doc_tokens=128))

    stream = fb.stream(args.prompt, max_new_tokens=args.max_new_tokens)
    print(args.prompt, end="", flush=True)
    for delta in stream:
        print(delta, end="", flush=True)
    result = stream.result
    print("\n\nretrievals:")
    for record in result.retrievals:
        titles = ", ".join(f"{p.title} ({p.score:.1f})" for p in record.passages) or "(none)"
        print(f"  step {record.step:>3}  query={record.query[-40:]!r}  ->  {titles}")
    s = result.stats
    print(f"\n{s.generated_tokens} tokens in {s.total_seconds:.2f}s ({s.tokens_per_second:.1f} tok/s), "
          f"retrieval {s.retrieval_seconds:.3f}s, prefilled {s.prefill_tokens}, reused {s.reused_tokens}")


if __name__ == "__main__":
    main()
