"""``flashback demo``: append vs prepend on SmolLM2 over the Python docs, fully offline.

    $ flashback demo            # texts, passages used, and the measured speed-up
    $ flashback demo --json     # {"append": {...}, "prepend": {...}, "speedup": ...}

It builds (once, cached) a BM25 index over the standard library's documentation found on this machine
(``stdlib_corpus``), loads SmolLM2-135M, warms both patterns up, then generates the same continuation
with append (FlashBack) and prepend (In-Context RALM), timing each by wall clock in the same process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .io_utils import cache_root

DEMO_PROMPT_TOPIC = "with"
DEMO_QUESTION = "\n\nIn short, a context manager in Python is"


def demo_index(model_alias: str = "smollm2-135m", rebuild: bool = False) -> Path:
    """The cached BM25 index over the Python documentation (built on first use)."""
    from .corpus import chunk_documents
    from .indexing import load_tokenizer
    from .retrievers import BM25Retriever
    from .retrievers.index_folder import MANIFEST_FILE
    from .stdlib_corpus import stdlib_documents

    out = cache_root() / "indexes" / f"python-docs-{model_alias}-{sys.version_info.major}.{sys.version_info.minor}"
    if (out / MANIFEST_FILE).is_file() and not rebuild:
        return out
    chunks = list(chunk_documents(stdlib_documents(), load_tokenizer(model_alias), 128))
    extra = {"chunking": {"chunk_tokens": 128, "tokenizer": model_alias}, "source": "python stdlib docs"}
    BM25Retriever.from_chunks(chunks, manifest_extra=extra).save(out)
    return out


def demo_prompt(tokenizer, prompt_tokens: int) -> str:
    """A real passage of the docs (the ``with`` statement), cut to ``prompt_tokens``, then a question."""
    from .stdlib_corpus import pydoc_topic_documents

    topics = {d.title: d.text for d in pydoc_topic_documents()}
    text = topics.get(DEMO_PROMPT_TOPIC) or next(iter(topics.values()), "Python is a programming language.")
    ids = tokenizer(text, add_special_tokens=False).input_ids[:prompt_tokens]
    return tokenizer.decode(ids) + DEMO_QUESTION


def run_demo(model: str = "smollm2-135m", max_new_tokens: int = 128, prompt_tokens: int = 512,
             stride: int = 16, query_tokens: int = 32, doc_tokens: int = 128, top_k: int = 1,
             device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    from .config import FlashBackConfig
    from .decoding import FlashBack
    from .models import load_model
    from .retrievers import load_index

    retriever = load_index(demo_index(model if model == "smollm2-135m" else "smollm2-135m"))
    lm, tokenizer = load_model(model, device=device, dtype=dtype)
    prompt = demo_prompt(tokenizer, prompt_tokens)
    engines = {pattern: FlashBack(lm, tokenizer, retriever, FlashBackConfig(
        pattern=pattern, stride=stride, query_tokens=query_tokens, doc_tokens=doc_tokens, top_k=top_k))
        for pattern in ("append", "prepend")}
    for fb in engines.values():          # warm-up: first calls pay for allocation and lazy init
        fb.generate(prompt, max_new_tokens=2 * stride, ignore_eos=True)
    out: dict[str, Any] = {"model": model, "prompt_tokens": len(tokenizer(prompt).input_ids),
                           "settings": {"stride": stride, "query_tokens": query_tokens,
                                        "doc_tokens": doc_tokens, "top_k": top_k,
                                        "max_new_tokens": max_new_tokens}}
    for pattern, fb in engines.items():
        result = fb.generate(prompt, max_new_tokens=max_new_tokens, ignore_eos=True)
        out[pattern] = {
            "text": result.text, "seconds": round(result.stats.total_seconds, 3),
            "tokens": result.stats.generated_tokens,
            "retrieval_seconds": round(result.stats.retrieval_seconds, 3),
            "prefill_tokens": result.stats.prefill_tokens,
            "passages": [{"step": r.step, "query": r.query,
                          "passages": [{"id": p.id, "title": p.title, "score": round(p.score, 3)}
                                       for p in r.passages]} for r in result.retrievals],
        }
    out["speedup"] = round(out["prepend"]["seconds"] / out["append"]["seconds"], 3)
    return out


def _print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"FlashBack demo: {report['model']}, prompt {report['prompt_tokens']} tokens, "
          f"{s['max_new_tokens']} new tokens, re-retrieval every {s['stride']} tokens\n")
    for pattern in ("append", "prepend"):
        r = report[pattern]
        print(f"=== {pattern}: {r['tokens']} tokens in {r['seconds']:.2f}s "
              f"(retrieval {r['retrieval_seconds']:.2f}s, {r['prefill_tokens']} tokens prefilled)")
        print(r["text"].strip())
        print()
    print("passages used (append):")
    for rec in report["append"]["passages"]:
        titles = ", ".join(f"{p['title']} [{p['id']}]" for p in rec["passages"]) or "(none)"
        print(f"  step {rec['step']:>4}: {titles}")
    print(f"\nspeed-up of append over prepend: {report['speedup']:.2f}x (wall clock, same run, after warm-up)")


def _cmd_demo(args: argparse.Namespace) -> int:
    report = run_demo(model=args.model, max_new_tokens=args.max_new_tokens, prompt_tokens=args.prompt_tokens,
                      stride=args.stride, doc_tokens=args.doc_tokens, device=args.device, dtype=args.dtype)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    return 0


def add_commands(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="append vs prepend on SmolLM2 over the Python docs (offline)")
    demo.add_argument("--model", default="smollm2-135m")
    demo.add_argument("--max-new-tokens", type=int, default=128)
    demo.add_argument("--prompt-tokens", type=int, default=512, help="length of the docs passage in the prompt")
    demo.add_argument("--stride", type=int, default=16)
    demo.add_argument("--doc-tokens", type=int, default=128)
    demo.add_argument("--device", default=None)
    demo.add_argument("--dtype", default=None)
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.set_defaults(func=_cmd_demo)
