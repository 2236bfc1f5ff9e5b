"""The demo's two shares (copying from the passages, self-repetition) over 32 prompts, with intervals.

    python benchmarks/demo_shares.py                       # base none / prepend + the shipped model (~15 min)
    python benchmarks/demo_shares.py --flashback shipped=smollm2-135m-flashback c75=/tmp/r/c75/adapter
    python benchmarks/demo_shares.py --prompts 8           # the demo's own 8 prompts only

``flashback demo`` judges a FlashBack model on 8 prompts, one greedy sample each, and a single prompt that
recites its passage moves the mean copy share by 10 points. This benchmark runs the same three kinds of
row (the base model with no retrieval and with prepended passages, and one FlashBack row per model or
adapter given) with the demo's retriever, settings and scoring (``flashback_rag.demo``) on the demo's 8
prompts plus the 24 below, and reports each row's mean shares and, for every FlashBack row, the
difference from prepend's mean with a 95% paired bootstrap interval over prompts (the same prompts are
resampled for both rows), plus how many prompts it copies on at all. Results are written after every row
(``results/<name>.json`` and ``.md``), and a rerun reuses the rows already recorded with the same source,
prompts and settings, so an interrupted run resumes.

The 24 extra prompts were fixed on 2026-12-04 before any model was run on them: pages of
``pydoc_data.topics`` on statements, expressions and literals that the demo does not use, each followed by
a question that names the page's subject the way the demo's questions do.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXTRA_PROMPTS: list[tuple[str, str]] = [(topic, f"\n\nIn short, {subject} in Python is") for topic, subject in [
    ("while", "a while loop"), ("if", "the if statement"), ("raise", "the raise statement"),
    ("return", "the return statement"), ("yield", "a yield expression"), ("global", "the global statement"),
    ("nonlocal", "the nonlocal statement"), ("del", "the del statement"), ("break", "the break statement"),
    ("continue", "the continue statement"), ("pass", "the pass statement"), ("async", "a coroutine"),
    ("await", "an await expression"), ("dict", "a dictionary display"), ("lists", "a list display"),
    ("strings", "a string literal"), ("integers", "an integer literal"),
    ("floating", "a floating point literal"), ("booleans", "a Boolean operation"),
    ("comparisons", "a comparison"), ("slicings", "a slicing"), ("calls", "a call"),
    ("exceptions", "an exception"), ("formatstrings", "a format string"),
]]
SHARES = ("copy_share", "repeat_share")


def all_prompts() -> list[tuple[str, str]]:
    from flashback_rag.demo import DEMO_PROMPTS

    return [*DEMO_PROMPTS, *EXTRA_PROMPTS]


def parse_sources(items: list[str]) -> list[tuple[str, str]]:
    """``NAME=SOURCE`` pairs: SOURCE is a shipped FlashBack model name or a ``flashback train`` adapter folder."""
    from flashback_rag.models import SHIPPED

    out = []
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise SystemExit(f"error: --flashback takes NAME=SOURCE, got {item!r}")
        if name in ("none", "prepend") or name in dict(out):
            raise SystemExit(f"error: row name {name!r} is taken")
        if source not in SHIPPED and not Path(source).is_dir():
            raise SystemExit(f"error: {source!r} is neither a shipped model ({', '.join(SHIPPED)}) nor a folder")
        out.append((name, source))
    return out


def diff_interval(a: list[float], b: list[float], samples: int, seed: int = 42) -> list[float]:
    """Mean of ``a - b`` and its 95% paired bootstrap interval over the prompts.

    >>> diff_interval([0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], samples=500)[0]
    0.125
    """
    import torch

    from flashback_rag.training.intervals import bootstrap_means

    delta = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    draws = bootstrap_means({"d": delta}, torch.ones(len(a)), samples=samples, seed=seed)["d"]
    lo, hi = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [round(float(delta.mean()), 4), round(lo, 4), round(hi, 4)]


def summarize(report: dict[str, Any], samples: int) -> dict[str, Any]:
    rows = report["rows"]
    out: dict[str, Any] = {}
    for name, row in rows.items():
        shares = {s: [p[s] for p in row["prompts"]] for s in SHARES}
        entry = {f"mean_{s}": round(sum(v) / len(v), 4) for s, v in shares.items()}
        entry["prompts_copying"] = sum(v > 0 for v in shares["copy_share"])
        entry["prompts_copying_quarter"] = sum(v >= 0.25 for v in shares["copy_share"])
        if name not in ("none", "prepend") and "prepend" in rows:
            base = {s: [p[s] for p in rows["prepend"]["prompts"]] for s in SHARES}
            for s in SHARES:
                entry[f"{s}_minus_prepend"] = diff_interval(shares[s], base[s], samples)
        out[name] = entry
    return out


def markdown(report: dict[str, Any]) -> str:
    s, summary = report["settings"], report["summary"]
    lines = [f"# Demo shares over {len(report['prompts'])} prompts", "",
             f"`{report['command']}` (torch threads: {report['threads']}, load average {report['load_average']}). "
             + (f"Sampled (temperature {s['sampling']['temperature']}, top_p {s['sampling']['top_p']}, "
                f"prompt i seeded {s['sampling']['seed']} + i), " if s.get("sampling") else "Greedy, ")
             + f"{s['max_new_tokens']} new tokens, {s['prompt_tokens']}-token docs page then a question; "
             f"stride {s['stride']}, {s['doc_tokens']}-token passages, top_k {s['top_k']}; "
             f"{s['ngram']}-grams. Intervals: 95% paired bootstrap over prompts.", "",
             "| row | source | copy | repeat | prompts copying (any / >= 25%) | copy - prepend | repeat - prepend |",
             "|---|---|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        e = summary[name]

        def fmt(key: str) -> str:
            if key not in e:
                return ""
            point, lo, hi = e[key]
            return f"{point:+.1%} [{lo:+.1%}, {hi:+.1%}]"

        lines.append(f"| {name} | {row['source']} | {e['mean_copy_share']:.1%} | {e['mean_repeat_share']:.1%} | "
                     f"{e['prompts_copying']} / {e['prompts_copying_quarter']} | {fmt('copy_share_minus_prepend')} | "
                     f"{fmt('repeat_share_minus_prepend')} |")
    lines += ["", "Per prompt (copy / repeat, %):", "",
              "| prompt | " + " | ".join(report["rows"]) + " |", "|---" * (len(report["rows"]) + 1) + "|"]
    for i, (topic, _) in enumerate(report["prompts"]):
        cells = [f"{row['prompts'][i]['copy_share']:.0%} / {row['prompts'][i]['repeat_share']:.0%}"
                 for row in report["rows"].values()]
        lines.append(f"| {topic} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_row(fb, prompts: list[str], max_new_tokens: int, label: str,
            sampling: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One generation per prompt; ``sampling`` (temperature, top_p, seed) makes it sampled, else greedy.

    A sampled row seeds prompt i with ``seed + i``, so every row draws from the same seeds.
    """
    from tqdm.auto import tqdm

    from flashback_rag.demo import describe_generation

    fb.generate(prompts[0], max_new_tokens=2 * fb.config.stride, ignore_eos=True)    # warm-up
    out = []
    for i, text in enumerate(tqdm(prompts, desc=label, unit="prompt")):
        kwargs = {} if not sampling else {"temperature": sampling["temperature"], "top_p": sampling["top_p"],
                                          "seed": sampling["seed"] + i}
        d = describe_generation(fb, fb.generate(text, max_new_tokens=max_new_tokens, ignore_eos=True, **kwargs))
        out.append({k: d[k] for k in ("text", "seconds", "copy_share", "repeat_share", "passages")})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flashback", nargs="+", default=["shipped=smollm2-135m-flashback"], metavar="NAME=SOURCE",
                   help="FlashBack rows: a shipped model name or an adapter folder (on --base); the first one's "
                        "settings are the base rows' retrieval settings")
    p.add_argument("--base", default="smollm2-135m", help="base model of adapter folders and of none / prepend")
    p.add_argument("--prompts", type=int, default=len(all_prompts()), help="the first N prompts (8 = the demo's)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sample every row at this temperature (default 0: greedy, as the demo does)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling with --temperature")
    p.add_argument("--seed", type=int, default=0, help="prompt i of a sampled row uses seed + i")
    p.add_argument("--samples", type=int, default=2000, help="bootstrap draws")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--name", default="demo-shares")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    prompts_all = all_prompts()
    if not 1 <= args.prompts <= len(prompts_all):
        raise SystemExit(f"error: --prompts must be in [1, {len(prompts_all)}]")
    sources = parse_sources(args.flashback)
    from flashback_rag.cli_checks import check_arguments
    from flashback_rag.errors import FlashBackError

    try:    # the flashback CLI's own rules and messages for these options (NaN included)
        check_arguments(argparse.Namespace(temperature=args.temperature, top_p=args.top_p, seed=args.seed))
    except FlashBackError as err:
        raise SystemExit(f"error: {err}") from None
    sampling = ({"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
                if args.temperature > 0 else None)

    import torch

    from flashback_rag.decoding import FlashBack
    from flashback_rag.demo import NGRAM, baseline_configs, demo_prompt, demo_retriever, load_flashback_model
    from flashback_rag.io_utils import atomic_write_json, atomic_write_text
    from flashback_rag.models import SHIPPED, base_alias, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out_json, out_md = Path(args.out) / f"{args.name}.json", Path(args.out) / f"{args.name}.md"
    chosen = prompts_all[:args.prompts]

    def load(source: str):
        if source in SHIPPED:
            return load_flashback_model(source)
        return load_flashback_model(args.base, adapter=source)

    # the first row's model gives the settings and the tokenizer; it is kept for its own row
    loaded = {sources[0][1]: load(sources[0][1])}
    _, tokenizer, trained = loaded[sources[0][1]]
    base = base_alias(sources[0][1]) if sources[0][1] in SHIPPED else args.base
    retriever = demo_retriever(base)
    texts = [demo_prompt(tokenizer, args.prompt_tokens, topic, question) for topic, question in chosen]
    settings = {**trained.to_dict(), "max_new_tokens": args.max_new_tokens, "prompt_tokens": args.prompt_tokens,
                "ngram": NGRAM, "base": base, **({"sampling": sampling} if sampling else {})}
    report: dict[str, Any] = {
        "command": "python benchmarks/demo_shares.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "settings": settings, "prompts": chosen, "rows": {}}
    previous = json.loads(out_json.read_text()) if out_json.is_file() else {}
    same_run = previous.get("settings") == settings and [tuple(x) for x in previous.get("prompts", [])] == chosen

    def keep(name: str, source: str, rows: list[dict[str, Any]] | None = None) -> None:
        if rows is None:
            report["rows"][name] = previous["rows"][name]
            print(f"{name}: reused from {out_json}", file=sys.stderr)
        else:
            report["rows"][name] = {"source": source, "prompts": rows}
        report["summary"] = summarize(report, args.samples)
        report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        atomic_write_json(out_json, report)
        atomic_write_text(out_md, markdown(report))

    def reusable(name: str, source: str) -> bool:
        return same_run and previous.get("rows", {}).get(name, {}).get("source") == source

    base_rows = baseline_configs(trained)
    if not all(reusable(name, base) for name in base_rows):
        base_lm, base_tokenizer = load_model(base)
        for name, config in base_rows.items():
            fb = FlashBack(base_lm, base_tokenizer, None if name == "none" else retriever, config)
            keep(name, base, run_row(fb, texts, args.max_new_tokens, name, sampling))
        del base_lm
    else:
        for name in base_rows:
            keep(name, base)
    for name, source in sources:
        held = loaded.pop(source, None)
        if reusable(name, source):
            keep(name, source)
            continue
        (lm, tok, config), held = held or load(source), None
        keep(name, source, run_row(FlashBack(lm, tok, retriever, config), texts, args.max_new_tokens, name,
                                   sampling))
        del lm
        gc.collect()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
