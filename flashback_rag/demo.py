"""``flashback demo``: what re-retrieving every few tokens costs and buys, on pages of the Python docs, offline.

    $ flashback demo                              # 3 pages x 4 rows, about 2-3 min on 2 CPU cores
    $ flashback demo --pages 1 --new-tokens 64    # a quick look
    $ flashback demo --json

It builds (once, cached) a BM25 index over the standard library's documentation found on this machine
(``stdlib_corpus``: every page, the continued ones included, as a docs assistant's corpus holds its docs),
cuts each page of :data:`DEMO_PAGES` to ``--prompt-tokens`` tokens and continues it ``--new-tokens``
tokens four ways:

- ``none``: the base model without retrieval;
- ``once``: the base model, one retrieval with the prompt's last tokens and the passage before the text,
  then plain decoding (what LlamaIndex and LangChain query engines do: retrieve, then generate);
- ``prepend``: the base model re-retrieving every ``stride`` tokens (In-Context RALM: every new passage
  means recomputing the whole context);
- ``flashback``: the shipped FlashBack model (``smollm2-135m-flashback``) re-retrieving every ``stride``
  tokens, the passage appended after the text between its trained markers, an unchanged block kept.

Each row reads each page's real continuation through its own decoding loop (``FlashBack.score``): every
row reads the same text, so it retrieves the same passages at the same points, and the report gives its
time, the tokens it prefilled, how many retrievals changed the passage, and the perplexity of the real
text under its layout. Then each row writes its own greedy continuation of the first page (shown, with
the share of its 8-grams copied from its passages and repeated within itself, ``text_stats``). The last
line says what the numbers mean. Timings are wall clock in one process after a warm-up.

The copy and repetition shares over many prompts (the earlier demo's question prompts, :data:`DEMO_PROMPTS`)
are ``benchmarks/demo_shares.py``'s.
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
DEMO_MODEL = "smollm2-135m-flashback"
# The pages the demo continues (pydoc topics long enough for a 512-token prompt and 256 more tokens),
# fixed before any model was run on them: statements a docs assistant gets asked about.
DEMO_PAGES = ("try", "import", "function")
ROWS = ("none", "once", "prepend", "flashback")
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


def demo_configs(trained) -> dict[str, Any]:
    """The four rows' settings: the base model's none / once / prepend beside the FlashBack row's own."""
    base = baseline_configs(trained)
    return {"none": base["none"], "once": base["prepend"].replace(retrieve="once"), "prepend": base["prepend"],
            "flashback": trained}


def page_tokens(tokenizer, topic: str, count: int) -> list[int]:
    """The first ``count`` tokens of a pydoc topic page (refused when the page is shorter)."""
    from .stdlib_corpus import pydoc_topic_documents

    pages = {d.title: d.text for d in pydoc_topic_documents()}
    if topic not in pages:
        raise ConfigError(f"this Python has no pydoc topic {topic!r}")
    ids = tokenizer(pages[topic], add_special_tokens=False).input_ids
    if len(ids) < count:
        raise ConfigError(f"the {topic!r} page has {len(ids)} tokens, fewer than --prompt-tokens + --new-tokens "
                          f"= {count}")
    return ids[:count]


def run_demo(model: str = DEMO_MODEL, pages: int = len(DEMO_PAGES), prompt_tokens: int = 512,
             new_tokens: int = 256, device: str | None = None, dtype: str | None = None,
             adapter: str | None = None, stride: int | None = None) -> dict[str, Any]:
    """The four rows on the first ``pages`` of :data:`DEMO_PAGES`: scored on the real continuation, and the
    first page generated (see the module docstring). ``model`` is a FlashBack model (shipped name or folder),
    or a base model with a ``flashback train`` ``adapter``; ``stride`` overrides its re-retrieval stride."""
    for name, value, low in (("pages", pages, 1), ("prompt_tokens", prompt_tokens, 32), ("new_tokens", new_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if pages > len(DEMO_PAGES):
        raise ConfigError(f"pages must be at most {len(DEMO_PAGES)}, got {pages}")
    from .decoding import FlashBack
    from .models import base_alias, load_model

    base = base_alias(model)
    flash_lm, tokenizer, trained = load_flashback_model(model, adapter, device=device, dtype=dtype)
    if stride is not None:
        trained = trained.replace(stride=stride)
    separate = base != model or adapter is not None
    base_lm, base_tokenizer = load_model(base, device=device, dtype=dtype) if separate else (flash_lm, tokenizer)
    retriever = demo_retriever(base)
    texts = [(topic, page_tokens(tokenizer, topic, prompt_tokens + new_tokens)) for topic in DEMO_PAGES[:pages]]
    engines = {name: FlashBack(flash_lm if name == "flashback" else base_lm,
                               tokenizer if name == "flashback" else base_tokenizer,
                               None if name == "none" else retriever, config)
               for name, config in demo_configs(trained).items()}
    warm = texts[0][1][:prompt_tokens]
    for fb in engines.values():          # warm-up: first calls pay for allocation and lazy init
        fb.generate(warm, max_new_tokens=2 * trained.stride, ignore_eos=True)
    report: dict[str, Any] = {"model": model, "adapter": str(adapter) if adapter else None, "base_model": base,
                              "settings": {**trained.to_dict(), "prompt_tokens": prompt_tokens,
                                           "new_tokens": new_tokens, "ngram": NGRAM},
                              "pages": []}
    for number, (topic, ids) in enumerate(texts):
        prompt, continuation = ids[:prompt_tokens], ids[prompt_tokens:]
        # rows take turns going first, so a slow moment of a shared machine does not always hit the same one
        order = list(ROWS[number % len(ROWS):] + ROWS[:number % len(ROWS)])
        scored = {name: describe_score(engines[name].score(prompt, continuation)) for name in order}
        page = {"topic": topic, "prompt": tokenizer.decode(prompt), "continuation": tokenizer.decode(continuation),
                "rows": {name: scored[name] for name in ROWS}}
        if number == 0:
            page["generated"] = {name: describe_generation(engines[name], engines[name].generate(
                prompt, max_new_tokens=new_tokens, ignore_eos=True)) for name in order}
            page["generated"] = {name: page["generated"][name] for name in ROWS}
        report["pages"].append(page)
    report["total"] = totals(report["pages"])
    report["conclusion"] = conclusion(report["total"], trained.stride)
    return report


def describe_score(result) -> dict[str, Any]:
    """What the report shows of one reading of the real continuation."""
    s = result.stats
    return {"seconds": round(s.total_seconds, 3), "tokens": s.generated_tokens, "prefill_tokens": s.prefill_tokens,
            "retrievals": s.retrievals, "changed": s.blocks_changed, "kept": sum(r.kept for r in result.retrievals),
            "nll": round(sum(result.token_nll), 4), "ppl": round(result.perplexity, 3)}


def totals(pages: list[dict[str, Any]]) -> dict[str, Any]:
    """Every row summed over the pages: seconds, tokens, prefill, retrievals and perplexity."""
    import math

    out = {}
    for name in ROWS:
        rows = [p["rows"][name] for p in pages]
        tokens = sum(r["tokens"] for r in rows)
        out[name] = {key: round(sum(r[key] for r in rows), 3)
                     for key in ("seconds", "tokens", "prefill_tokens", "retrievals", "changed", "kept")}
        out[name]["ppl"] = round(math.exp(sum(r["nll"] for r in rows) / tokens), 3)
        out[name]["ms_per_token"] = round(1000 * out[name]["seconds"] / tokens, 2)
    return out


def conclusion(total: dict[str, Any], stride: int) -> str:
    """One line, from the numbers: what re-retrieving cost and bought, FlashBack against the others.

    It names the gap to prepend when there is one (more than 10% in perplexity): a user must see that the
    speed is bought with reading, not only that FlashBack beats retrieve-once.
    """
    fb, prepend, once, none = (total[k] for k in ("flashback", "prepend", "once", "none"))
    speed = prepend["seconds"] / fb["seconds"]
    cost = fb["seconds"] / none["seconds"]
    quality = ("reads the real text better than retrieve-once" if fb["ppl"] < once["ppl"] else
               "does not read the real text better than retrieve-once here")
    if fb["ppl"] > 1.1 * prepend["ppl"]:
        gap = (f"; but it reads the passages far less than prepend every {stride} does "
               f"(perplexity {fb['ppl']:.2f} vs {prepend['ppl']:.2f})")
    elif fb["ppl"] < prepend["ppl"] / 1.1:
        gap = f"; it reads them better than prepend every {stride} (perplexity {fb['ppl']:.2f} vs {prepend['ppl']:.2f})"
    else:
        gap = f"; level with prepend every {stride} (perplexity {fb['ppl']:.2f} vs {prepend['ppl']:.2f})"
    return (f"Re-retrieving every {stride} tokens, FlashBack ran at {cost:.2f}x the time of no retrieval and "
            f"{speed:.2f}x prepend's speed ({fb['prefill_tokens']:.0f} vs {prepend['prefill_tokens']:.0f} tokens "
            f"prefilled), and {quality} (perplexity {fb['ppl']:.2f} vs {once['ppl']:.2f}, no retrieval "
            f"{none['ppl']:.2f}){gap}.")


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


ROW_TITLES = {"none": "no retrieval (base model)", "once": "retrieve once (base model, passage before the text)",
              "prepend": "prepend every {stride} (base model, In-Context RALM)",
              "flashback": "FlashBack every {stride} ({model})"}


def _print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    flash_name = report["model"] + (f" + {report['adapter']}" if report.get("adapter") else "")
    titles = {name: title.format(stride=s["stride"], model=flash_name) for name, title in ROW_TITLES.items()}
    print(f"FlashBack demo: {len(report['pages'])} page(s) of the Python docs, each cut to {s['prompt_tokens']} tokens "
          f"and continued {s['new_tokens']} tokens; BM25 over the docs (the pages included), "
          f"{s['doc_tokens']}-token passages, FlashBack: echo {s['echo_tokens']}, block positions "
          f"{s['block_positions']}, unchanged blocks kept\n")
    print("Reading each page's real continuation (every row reads the same text, so it retrieves the same passages):")
    print(f"  {'row':<58}{'time':>8}{'ms/token':>10}{'prefilled':>11}{'changed':>10}{'ppl':>8}")
    for name in ROWS:
        t = report["total"][name]
        changed = f"{t['changed']:.0f}/{t['retrievals']:.0f}" if t["retrievals"] else "-"
        print(f"  {titles[name]:<58}{t['seconds']:>7.1f}s{t['ms_per_token']:>10.1f}{t['prefill_tokens']:>11.0f}"
              f"{changed:>10}{t['ppl']:>8.2f}")
    print("  per page (ppl): " + "; ".join(f"{p['topic']}: " + " / ".join(f"{p['rows'][n]['ppl']:.2f}" for n in ROWS)
                                           for p in report["pages"]) + "  (none / once / prepend / FlashBack)")
    first = report["pages"][0]
    print(f"\nEach row's own greedy continuation of the '{first['topic']}' page "
          f"(8-grams copied from its passages / repeated within it):")
    for name in ROWS:
        g = first["generated"][name]
        print(f"=== {titles[name]}: {g['seconds']:.2f}s, copied {g['copy_share']:.0%}, repeated {g['repeat_share']:.0%}")
        print(g["text"].strip())
        print()
    print(report["conclusion"])


def _cmd_demo(args: argparse.Namespace) -> int:
    report = run_demo(model=args.model, pages=args.pages, prompt_tokens=args.prompt_tokens,
                      new_tokens=args.new_tokens, device=args.device, dtype=args.dtype, adapter=args.adapter,
                      stride=args.stride)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    return 0


def add_commands(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="no retrieval, retrieve once, prepend and FlashBack on pages of the "
                                              "Python docs (offline)")
    demo.add_argument("--model", default=DEMO_MODEL, help="FlashBack model (default: %(default)s); the other "
                      "rows use its base model with its retrieval settings")
    demo.add_argument("--adapter", default=None, help="a FlashBack adapter folder (flashback train --out) for "
                      "--model, which is then its base model: the FlashBack row uses the adapter")
    demo.add_argument("--pages", type=int, default=len(DEMO_PAGES),
                      help=f"how many of the pages ({', '.join(DEMO_PAGES)}) to continue (default: all)")
    demo.add_argument("--prompt-tokens", type=int, default=512, help="tokens of each page in the prompt")
    demo.add_argument("--new-tokens", type=int, default=256, help="tokens read and generated after the prompt")
    demo.add_argument("--stride", type=int, default=None, help="re-retrieval stride (default: the model's)")
    demo.add_argument("--device", default=None)
    demo.add_argument("--dtype", default=None)
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.set_defaults(func=_cmd_demo)
