"""``flashback demo``: no retrieval, prepend and FlashBack side by side on SmolLM2 over the Python docs, offline.

    $ flashback demo              # three texts, their times, and how much each copies and repeats itself
    $ flashback demo --prompts 2  # the shares over the first 2 prompts only (faster)
    $ flashback demo --json       # {"none": {...}, "prepend": {...}, "flashback": {...}, "mean": ..., ...}

It builds (once, cached) a BM25 index over the standard library's documentation found on this machine
(``stdlib_corpus``) and generates the same continuation of the same prompt three ways: the base model with
no retrieval, the base model with prepended passages (In-Context RALM), and the shipped FlashBack model
(``smollm2-135m-flashback``: passages appended between trained markers at the positions before the text,
the running text echoed after them, the prefix's KV cache kept). Each is timed by wall clock in the same
process after a warm-up, and scored with two numbers that make degenerate copying visible
(``text_stats``): the share of its 8-grams found verbatim in the passages it was given, and the share of
its 8-grams it had already produced. Greedy decoding of a small model loops or recites on one prompt and
not on the next, so the demo runs several prompts (a page of the docs, then a question about it:
:data:`DEMO_PROMPTS`) and reports each row's mean shares beside the first prompt's texts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .io_utils import cache_root

DEMO_PROMPT_TOPIC = "with"
DEMO_QUESTION = "\n\nIn short, a context manager in Python is"
# (pydoc topic, the question after its page): the first is the one whose texts the demo shows. Fixed
# before any model was run on them; the shares are averaged over the first --prompts of them.
DEMO_PROMPTS: list[tuple[str, str]] = [
    (DEMO_PROMPT_TOPIC, DEMO_QUESTION),
    ("try", "\n\nIn short, the try statement in Python is"),
    ("for", "\n\nIn short, a for loop in Python is"),
    ("class", "\n\nIn short, a class definition in Python is"),
    ("lambda", "\n\nIn short, a lambda expression in Python is"),
    ("import", "\n\nIn short, the import statement in Python is"),
    ("assert", "\n\nIn short, an assert statement in Python is"),
    ("function", "\n\nIn short, a function definition in Python is"),
]
DEMO_PROMPT_COUNT = len(DEMO_PROMPTS)      # all of them: ~2.5 min on 2 CPU cores
DEMO_MODEL = "smollm2-135m-flashback"
# The shipped model was trained on 64-token chunks (plus their title line); the demo index matches.
DEMO_CHUNK_TOKENS = 64
NGRAM = 8


def demo_index(model_alias: str = "smollm2-135m", rebuild: bool = False,
               chunk_tokens: int = DEMO_CHUNK_TOKENS) -> Path:
    """The cached BM25 index over the Python documentation (built on first use)."""
    from .corpus import chunk_documents
    from .indexing import load_tokenizer
    from .retrievers import BM25Retriever
    from .retrievers.index_folder import MANIFEST_FILE
    from .stdlib_corpus import stdlib_documents

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = cache_root() / "indexes" / f"python-docs-{model_alias}-{version}-{chunk_tokens}"
    if (out / MANIFEST_FILE).is_file() and not rebuild:
        return out
    chunks = list(chunk_documents(stdlib_documents(), load_tokenizer(model_alias), chunk_tokens))
    extra = {"chunking": {"chunk_tokens": chunk_tokens, "tokenizer": model_alias}, "source": "python stdlib docs"}
    BM25Retriever.from_chunks(chunks, manifest_extra=extra).save(out)
    return out


def demo_prompt(tokenizer, prompt_tokens: int, topic: str = DEMO_PROMPT_TOPIC,
                question: str = DEMO_QUESTION) -> str:
    """A real page of the docs (the ``with`` statement by default), cut to ``prompt_tokens``, then a question."""
    from .stdlib_corpus import pydoc_topic_documents

    topics = {d.title: d.text for d in pydoc_topic_documents()}
    text = topics.get(topic) or next(iter(topics.values()), "Python is a programming language.")
    ids = tokenizer(text, add_special_tokens=False).input_ids[:prompt_tokens]
    return tokenizer.decode(ids) + question


def load_flashback_model(model: str, adapter: str | None = None, device: str | None = None,
                         dtype: str | None = None):
    """``(model, tokenizer, settings)`` of a FlashBack row: ``model`` alone (a shipped name or a folder), or a
    base model with a ``flashback train`` ``adapter`` folder, merged as the shipped model loads (decoding at
    the base model's cost). ``settings``: the recorded layout, or the defaults for a model without one."""
    from .config import FlashBackConfig
    from .models import load_model, merged_for_inference

    lm, tokenizer = load_model(model, device=device, dtype=dtype, adapter=adapter)
    if adapter is not None:
        lm = merged_for_inference(lm)
    return lm, tokenizer, getattr(lm, "flashback_config", None) or FlashBackConfig()


def baseline_configs(trained) -> dict[str, Any]:
    """The base model's rows beside a FlashBack row: no retrieval, and prepend with the same retrieval
    settings (no markers, no echo: the In-Context RALM layout)."""
    return {"none": trained.replace(pattern="none"),
            "prepend": trained.replace(pattern="prepend", markers=False, echo_tokens=0)}


def demo_retriever(base: str):
    """The demo's BM25 index over the Python docs, chunked with ``base``'s tokenizer (built on first use)."""
    from .retrievers import load_index

    return load_index(demo_index("smollm2-135m" if base.startswith("smollm2") else base))


def run_demo(model: str = DEMO_MODEL, max_new_tokens: int = 128, prompt_tokens: int = 512,
             device: str | None = None, dtype: str | None = None, prompts: int = DEMO_PROMPT_COUNT,
             adapter: str | None = None) -> dict[str, Any]:
    """Generate with no retrieval, prepend (base model) and FlashBack (``model``); texts, times, shares.

    ``model`` is a FlashBack model (shipped name, or a folder / adapter-carrying model whose recorded
    settings are the layout), or a base model with a FlashBack ``adapter`` folder (``flashback train``'s);
    the other two rows use the base model with the same retrieval settings. The three rows run on the first ``prompts`` of :data:`DEMO_PROMPTS`; the report's ``none`` /
    ``prepend`` / ``flashback`` are the first prompt's, ``mean`` each row's shares over all of them.
    """
    if isinstance(prompts, bool) or not isinstance(prompts, int) or not 1 <= prompts <= len(DEMO_PROMPTS):
        raise ConfigError(f"prompts must be an integer in [1, {len(DEMO_PROMPTS)}], got {prompts!r}")
    from .decoding import FlashBack
    from .models import base_alias, load_model

    base = base_alias(model)
    flash_lm, tokenizer, trained = load_flashback_model(model, adapter, device=device, dtype=dtype)
    separate = base != model or adapter is not None
    base_lm, base_tokenizer = load_model(base, device=device, dtype=dtype) if separate else (flash_lm, tokenizer)
    retriever = demo_retriever(base)
    chosen = [(topic, demo_prompt(tokenizer, prompt_tokens, topic, question))
              for topic, question in DEMO_PROMPTS[:prompts]]
    prompt = chosen[0][1]
    engines = {name: FlashBack(base_lm, base_tokenizer, None if name == "none" else retriever, config)
               for name, config in baseline_configs(trained).items()}
    engines["flashback"] = FlashBack(flash_lm, tokenizer, retriever, trained)
    for fb in engines.values():          # warm-up: first calls pay for allocation and lazy init
        fb.generate(prompt, max_new_tokens=2 * trained.stride, ignore_eos=True)
    out: dict[str, Any] = {"model": model, "adapter": str(adapter) if adapter else None, "base_model": base, "prompt_tokens": len(tokenizer(prompt).input_ids),
                           "settings": {**trained.to_dict(), "max_new_tokens": max_new_tokens, "ngram": NGRAM},
                           "prompts": []}
    for topic, text in chosen:
        rows = {name: describe_generation(fb, fb.generate(text, max_new_tokens=max_new_tokens, ignore_eos=True))
                for name, fb in engines.items()}
        out["prompts"].append({"topic": topic, "question": text[text.rindex("\n") + 1:], **rows})
    out.update({name: out["prompts"][0][name] for name in engines})
    out["mean"] = {name: {share: round(sum(p[name][share] for p in out["prompts"]) / len(out["prompts"]), 3)
                          for share in ("copy_share", "repeat_share", "seconds")} for name in engines}
    out["speedup"] = round(out["mean"]["prepend"]["seconds"] / out["mean"]["flashback"]["seconds"], 3)
    return out


def describe_generation(fb, result) -> dict[str, Any]:
    """What the report shows of one generation: text, time, copy and repetition shares, passages."""
    from .text_stats import copy_share, repeat_share

    given = [fb._passage_tokens(p) for r in result.retrievals for p in r.passages]
    return {
        "pattern": fb.config.pattern, "echo_tokens": fb.config.layout_echo,
        "block_positions": fb.config.layout_block_positions, "text": result.text,
        "seconds": round(result.stats.total_seconds, 3), "tokens": result.stats.generated_tokens,
        "retrieval_seconds": round(result.stats.retrieval_seconds, 3),
        "prefill_tokens": result.stats.prefill_tokens,
        "copy_share": round(copy_share(result.token_ids, given, NGRAM), 3),
        "repeat_share": round(repeat_share(result.token_ids, NGRAM), 3),
        "passages": [{"step": r.step, "query": r.query,
                      "passages": [{"id": p.id, "title": p.title, "score": round(p.score, 3)} for p in r.passages]}
                     for r in result.retrievals],
    }


ROW_TITLES = {"none": "no retrieval (base model)", "prepend": "prepend (base model, In-Context RALM)",
              "flashback": "FlashBack ({model})"}


def _print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"FlashBack demo: {report['model']} (base {report['base_model']}), prompt {report['prompt_tokens']} "
          f"tokens, {s['max_new_tokens']} new tokens, re-retrieval every {s['stride']} tokens, "
          f"{s['doc_tokens']}-token passages, echo {s['echo_tokens']}, block positions {s['block_positions']}\n")
    flash_name = report["model"] + (f" + {report['adapter']}" if report.get("adapter") else "")
    for name in ("none", "prepend", "flashback"):
        r = report[name]
        print(f"=== {ROW_TITLES[name].format(model=flash_name)}: {r['tokens']} tokens in {r['seconds']:.2f}s "
              f"({r['prefill_tokens']} tokens prefilled); {s['ngram']}-grams copied from its passages "
              f"{r['copy_share']:.0%}, repeated within it {r['repeat_share']:.0%}")
        print(r["text"].strip())
        print()
    print("passages FlashBack read:")
    for rec in report["flashback"]["passages"]:
        titles = ", ".join(f"{p['title']} [{p['id']}]" for p in rec["passages"]) or "(none)"
        print(f"  step {rec['step']:>4}: {titles}")
    prompts = report["prompts"]
    print(f"\n{s['ngram']}-grams copied from the passages / repeated within the output, per prompt (greedy):")
    names = ("none", "prepend", "flashback")
    print(f"  {'prompt':<10}" + "".join(f"{n:>17}" for n in names))
    for p in prompts:
        print(f"  {p['topic']:<10}" + "".join(f"{p[n]['copy_share']:>10.0%} /{p[n]['repeat_share']:>5.0%}"
                                             for n in names))
    mean = report["mean"]
    print(f"  {'mean':<10}" + "".join(f"{mean[n]['copy_share']:>10.0%} /{mean[n]['repeat_share']:>5.0%}"
                                      for n in names))
    print(f"\nspeed-up of FlashBack over prepend: {report['speedup']:.2f}x (wall clock, mean over {len(prompts)} "
          f"prompt{'s' if len(prompts) > 1 else ''}, same run, after warm-up)")


def _cmd_demo(args: argparse.Namespace) -> int:
    report = run_demo(model=args.model, max_new_tokens=args.max_new_tokens, prompt_tokens=args.prompt_tokens,
                      device=args.device, dtype=args.dtype, prompts=args.prompts, adapter=args.adapter)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    return 0


def add_commands(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="no retrieval, prepend and FlashBack on SmolLM2 over the Python "
                                              "docs (offline)")
    demo.add_argument("--model", default=DEMO_MODEL, help="FlashBack model (default: %(default)s); the other "
                      "rows use its base model with its retrieval settings")
    demo.add_argument("--adapter", default=None, help="a FlashBack adapter folder (flashback train --out) for "
                      "--model, which is then its base model: the FlashBack row uses the adapter")
    demo.add_argument("--max-new-tokens", type=int, default=128)
    demo.add_argument("--prompt-tokens", type=int, default=512, help="length of the docs passage in the prompt")
    demo.add_argument("--prompts", type=int, default=DEMO_PROMPT_COUNT,
                      help=f"how many prompts the shares are averaged over (1-{len(DEMO_PROMPTS)}; default "
                           "%(default)s, all); the first one's texts are shown")
    demo.add_argument("--device", default=None)
    demo.add_argument("--dtype", default=None)
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.set_defaults(func=_cmd_demo)
