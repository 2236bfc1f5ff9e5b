"""Speed on real retrieval: the shipped FlashBack model against prepend and no retrieval, as users run them.

    python benchmarks/speed.py --real                                   # T=1024, strides 16 and once, top 1
    python benchmarks/speed.py --real --T 1024 2048 --strides 4 8 16 32 64 once --top-k 1 3
    python benchmarks/real_retrieval.py --pages 2 --new-tokens 64 --name real-smoke   # the same script

Pages: validation documents of the quality benchmark's corpus (``benchmarks/regimes.py``: never trained
on), those with at least ``T`` tokens, evenly spread over their titles; each is cut to ``T - new_tokens``
tokens, the prompt. Retrieval: BM25 over 64-token chunks in both regimes of the quality benchmark
(``related``: the index does not hold the page; ``copy``: it does). Rows:

- ``none``: the base model without retrieval;
- ``prepend``: the base model with the In-Context RALM layout (passages before the text, no markers),
  re-retrieving every ``s`` tokens, or once (``retrieve="once"``: the usual retrieve-then-generate RAG);
- ``flashback``: the shipped model (``smollm2-135m-flashback``, its trained layout: append, markers, echo
  16, block positions before) with an unchanged block kept (the default), every ``s`` tokens or once;
- ``flashback_reinsert``: the same at ``--reinsert-stride`` with ``keep_unchanged=False`` (the paper's
  re-insertion at every point), to show what keeping the block saves.

Two protocols, both recorded:

- ``free``: every row generates its own ``new_tokens`` greedy tokens: what a user sees. The rows write
  different texts, so they retrieve with different queries and change passages at different points.
- ``replay``: every row reads the page's real continuation (``FlashBack.score``): the same text, hence the
  same queries and passages at the same points for every row. The engines' costs on identical work,
  and the perplexity of the real text under each layout.

Each generation is recorded as it finishes (``results/<name>.jsonl``: a stopped run resumes where it
was); the summary (``results/<name>.{json,md}``) gives per (regime, T, top_k, stride): FlashBack's speed
over prepend's (mean over pages and the worst page), the share of retrieval points whose passage
changed for each, FlashBack's time over no retrieval's, and (replay) the perplexities. Timing: wall
clock around each call, after one warm-up per model; the rows of one page run back to back in a
rotating order; torch threads and the load average are recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from harness import sibling  # noqa: E402
from flashback_rag.errors import FlashBackError  # noqa: E402
from flashback_rag.io_utils import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("none", "prepend", "flashback", "flashback_reinsert")
PROTOCOLS = ("free", "replay")




def log(message: str) -> None:
    print(f"real: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs
def choose_pages(docs, tokenizer, min_tokens: int, count: int) -> list[tuple[str, list[int]]]:
    """``count`` documents with at least ``min_tokens`` tokens, evenly spread over their sorted titles."""
    from flashback_rag.training.prepare import spread

    long_enough = []
    for doc in sorted(docs, key=lambda d: d.title):
        ids = tokenizer(doc.text, add_special_tokens=False, verbose=False).input_ids
        if len(ids) >= min_tokens:
            long_enough.append((doc.title, ids[:min_tokens]))
    if not long_enough:
        raise FlashBackError(f"no validation document has {min_tokens} tokens")
    return spread(long_enough, count)


def stride_label(stride) -> str:
    return "once" if stride == "once" else str(stride)


def row_config(row: str, stride, top_k: int, trained):
    """The FlashBackConfig of a row at a stride (an int, or "once")."""
    demo = _demo()
    base = demo.baseline_configs(trained)
    config = {"none": base["none"], "prepend": base["prepend"], "flashback": trained,
              "flashback_reinsert": trained.replace(keep_unchanged=False)}[row]
    if stride == "once":
        return config.replace(top_k=top_k, retrieve="once")
    return config.replace(top_k=top_k, stride=int(stride), retrieve="periodic")


def _demo():
    from flashback_rag import demo

    return demo


# ----------------------------------------------------------------------------- one generation
def run_one(fb, prompt: list[int], continuation: list[int], protocol: str) -> dict[str, Any]:
    """One timed generation (``free``) or reading of the real continuation (``replay``)."""
    device = fb.backend.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    if protocol == "free":
        result = fb.generate(prompt, max_new_tokens=len(continuation), ignore_eos=True)
    else:
        result = fb.score(prompt, continuation)
    sync()
    seconds = time.perf_counter() - start
    s = result.stats
    out = {"seconds": round(seconds, 4), "model_seconds": round(s.model_seconds, 4),
           "retrieval_seconds": round(s.retrieval_seconds, 4), "tokens": s.generated_tokens,
           "prefill_tokens": s.prefill_tokens, "decode_steps": s.decode_steps, "retrievals": s.retrievals,
           "blocks_changed": s.blocks_changed, "kept": sum(r.kept for r in result.retrievals),
           "slides": len(result.slides)}
    if protocol == "replay":
        out["nll"] = round(sum(result.token_nll) / len(result.token_nll), 5)
    return out


# ----------------------------------------------------------------------------- the run
def cell_keys(args) -> list[tuple[str, int, int]]:
    """(regime, T, top_k) cells, in the order they run: the main table first."""
    return [(regime, total, k) for total in sorted(args.T) for k in args.top_k for regime in args.regimes]


def row_plan(args) -> list[tuple[str, Any]]:
    plan = [("none", None)]
    for stride in args.strides:
        plan += [("prepend", stride), ("flashback", stride)]
        if stride != "once" and int(stride) == args.reinsert_stride:
            plan.append(("flashback_reinsert", stride))
    return plan


def run(args) -> Path:
    from flashback_rag.indexing import load_tokenizer
    from flashback_rag.models import base_alias, load_model

    torch.set_num_threads(args.threads)
    regimes = sibling("regimes")
    demo = _demo()
    tokenizer = load_tokenizer(base_alias(args.model))
    parts, retrievers, corpus_name = regimes.eval_retrievers(tokenizer)
    flash_lm, flash_tok, trained = demo.load_flashback_model(args.model, args.adapter)
    base_lm, base_tok = load_model(base_alias(args.model))
    records_path = Path(args.out) / f"{args.name}.jsonl"
    done = set()
    if records_path.is_file():
        for line in records_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                done.add((r["regime"], r["T"], r["top_k"], r["page"], r["protocol"], r["row"], r["stride"]))
    log(f"{corpus_name}; {len(done)} generations already recorded in {records_path}")
    from flashback_rag import FlashBack

    engines: dict[tuple, FlashBack] = {}

    def engine(row, stride, top_k, regime):
        key = (row, stride, top_k, regime)
        if key not in engines:
            config = row_config(row, stride if stride is not None else 16, top_k, trained)
            model, tok = (flash_lm, flash_tok) if row.startswith("flashback") else (base_lm, base_tok)
            engines[key] = FlashBack(model, tok, None if row == "none" else retrievers[regime], config)
        return engines[key]

    # warm-up: each model once, so the first timed call pays no allocation or lazy initialisation
    warm = choose_pages(parts["validation"], tokenizer, min(args.T), 1)[0][1][:256]
    for row in ("none", "prepend", "flashback"):
        engine(row, 16, 1, args.regimes[0]).generate(warm[:224], max_new_tokens=32, ignore_eos=True)
    pages_by_T = {total: choose_pages(parts["validation"], tokenizer, total, args.pages) for total in args.T}
    plan = row_plan(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(records_path, "a", encoding="utf-8") as out:
        for regime, total, top_k in cell_keys(args):
            for p, (title, ids) in enumerate(pages_by_T[total]):
                prompt, continuation = ids[:total - args.new_tokens], ids[total - args.new_tokens:total]
                for protocol in args.protocols:
                    turn = (p + len(done)) % len(plan)          # rotate who runs first, page to page
                    for row, stride in plan[turn:] + plan[:turn]:
                        key = (regime, total, top_k, title, protocol, row, stride_label(stride) if stride else "-")
                        if key in done:
                            continue
                        measured = run_one(engine(row, stride, top_k, regime), prompt, continuation, protocol)
                        record = {"regime": regime, "T": total, "top_k": top_k, "page": title, "protocol": protocol,
                                  "row": row, "stride": key[-1], "prompt_tokens": len(prompt),
                                  "threads": torch.get_num_threads(), "load": _load(), **measured}
                        out.write(json.dumps(record) + "\n")
                        out.flush()
                        done.add(key)
                        log(f"{regime} T={total} k={top_k} {title[:24]:24s} {protocol:6s} {row:18s} s={key[-1]:>4} "
                            f"{measured['seconds']:7.2f}s changed {measured['blocks_changed']}/{measured['retrievals']}")
    return records_path


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------- summary
def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (protocol, regime, T, top_k, stride): FlashBack against prepend and none, over pages."""
    index = {(r["protocol"], r["regime"], r["T"], r["top_k"], r["page"], r["row"], r["stride"]): r for r in records}
    cells = sorted({(r["protocol"], r["regime"], r["T"], r["top_k"], r["stride"]) for r in records
                    if r["row"] == "flashback"}, key=lambda c: (c[0], c[1], c[2], c[3], _stride_order(c[4])))
    out = []
    for protocol, regime, total, top_k, stride in cells:
        pages = sorted({r["page"] for r in records if (r["protocol"], r["regime"], r["T"], r["top_k"], r["stride"],
                                                       r["row"]) == (protocol, regime, total, top_k, stride, "flashback")})
        rows = {}
        for name in ("prepend", "flashback", "flashback_reinsert"):
            rows[name] = [index.get((protocol, regime, total, top_k, page, name, stride)) for page in pages]
        none = [index.get((protocol, regime, total, top_k, page, "none", "-")) for page in pages]
        both = [(a, b) for a, b in zip(rows["prepend"], rows["flashback"]) if a and b]
        if not both:
            continue
        speed = [a["seconds"] / b["seconds"] for a, b in both]
        cell = {"protocol": protocol, "regime": regime, "T": total, "top_k": top_k, "stride": stride,
                "pages": len(both), "speedup_mean": statistics.fmean(speed), "speedup_min": min(speed),
                "speedup_pages": [round(v, 3) for v in speed],
                "prepend_changed": _share(r for r, _ in both), "flashback_changed": _share(b for _, b in both),
                "prepend_prefill": statistics.fmean(a["prefill_tokens"] for a, _ in both),
                "flashback_prefill": statistics.fmean(b["prefill_tokens"] for _, b in both),
                "prepend_s_per_token": statistics.fmean(a["seconds"] / a["tokens"] for a, _ in both),
                "flashback_s_per_token": statistics.fmean(b["seconds"] / b["tokens"] for _, b in both)}
        over_none = [b["seconds"] / n["seconds"] for (_, b), n in zip(both, none) if n]
        if over_none:
            cell.update(over_none_mean=statistics.fmean(over_none), over_none_max=max(over_none),
                        none_s_per_token=statistics.fmean(n["seconds"] / n["tokens"] for n in none if n))
        reinsert = [(c, b) for c, (_, b) in zip(rows["flashback_reinsert"], both) if c]
        if reinsert:
            cell["keep_speedup_over_reinsert"] = statistics.fmean(c["seconds"] / b["seconds"] for c, b in reinsert)
            cell["reinsert_prefill"] = statistics.fmean(c["prefill_tokens"] for c, _ in reinsert)
        if protocol == "replay":
            for name, got in (("prepend", [a for a, _ in both]), ("flashback", [b for _, b in both]),
                              ("none", [n for n in none if n])):
                if got and all("nll" in g for g in got):
                    cell[f"{name}_ppl"] = math.exp(statistics.fmean(g["nll"] for g in got))
        out.append(cell)
    return out


def _share(rows) -> float:
    rows = list(rows)
    total = sum(r["retrievals"] for r in rows)
    return sum(r["blocks_changed"] for r in rows) / total if total else 0.0


def _stride_order(stride: str) -> int:
    return 10 ** 9 if stride == "once" else int(stride)


def markdown(cells: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Speed on real retrieval: {meta['model']} against prepend (base model)", "",
             f"Measured {meta['date']}; command `{meta['command']}`; {meta['threads']} torch thread(s), load average "
             f"{meta['load_first']} at the first generation and {meta['load_last']} at the last "
             f"({meta['generations']} generations). Pages: {meta['pages']}.", ""]
    for protocol in PROTOCOLS:
        rows = [c for c in cells if c["protocol"] == protocol]
        if not rows:
            continue
        lines += [f"## Protocol `{protocol}`", "",
                  "| regime | T | top k | stride | pages | FlashBack / prepend speed: mean (worst page) | passages changed: "
                  "prepend / FlashBack | prefilled tokens: prepend / FlashBack | FlashBack time / none | s per token: "
                  "none / prepend / FlashBack |" + (" ppl: none / prepend / FlashBack |" if protocol == "replay" else ""),
                  "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if protocol == "replay" else "")]
        for c in rows:
            over = (f"{c['over_none_mean']:.3f} (max {c['over_none_max']:.3f})" if "over_none_mean" in c else "-")
            line = (f"| {c['regime']} | {c['T']} | {c['top_k']} | {c['stride']} | {c['pages']} | "
                    f"{c['speedup_mean']:.2f}x ({c['speedup_min']:.2f}x) | {c['prepend_changed']:.0%} / "
                    f"{c['flashback_changed']:.0%} | {c['prepend_prefill']:.0f} / {c['flashback_prefill']:.0f} | {over} | "
                    f"{c.get('none_s_per_token', float('nan')) * 1000:.1f} / {c['prepend_s_per_token'] * 1000:.1f} / "
                    f"{c['flashback_s_per_token'] * 1000:.1f} ms |")
            if protocol == "replay":
                line += (f" {c.get('none_ppl', float('nan')):.2f} / {c.get('prepend_ppl', float('nan')):.2f} / "
                         f"{c.get('flashback_ppl', float('nan')):.2f} |")
            lines.append(line)
        keep = [c for c in rows if "keep_speedup_over_reinsert" in c]
        if keep:
            lines += ["", "Keeping an unchanged block against re-inserting it at every point (the paper's), same stride: "
                      + "; ".join(f"{c['regime']} T={c['T']} k={c['top_k']} s={c['stride']}: "
                                  f"{c['keep_speedup_over_reinsert']:.2f}x faster, {c['reinsert_prefill']:.0f} -> "
                                  f"{c['flashback_prefill']:.0f} tokens prefilled" for c in keep)]
        lines.append("")
    lines += ["A speed above 1 means FlashBack (the shipped model, append, unchanged blocks kept) took less time than "
              "prepend (the base model, In-Context RALM layout) on the same page, regime and schedule. `free`: each "
              "row generated its own greedy text; `replay`: every row read the page's real continuation, so both "
              "retrieved the same passages at the same points. `once`: one retrieval at the prompt, its block kept "
              "(the usual RAG). Passages changed: the share of retrieval points whose passage differed from the one "
              "in place (the first point counts as a change).", ""]
    return "\n".join(lines)


def write_summary(records_path: Path, name: str, command: str, model: str, out: Path = RESULTS) -> dict[str, Any]:
    import datetime as dt

    records = read_records(records_path)
    cells = summarize(records)
    meta = {"model": model, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
            "threads": sorted({r["threads"] for r in records}), "generations": len(records),
            "load_first": records[0].get("load") if records else None,
            "load_last": records[-1].get("load") if records else None,
            "pages": ", ".join(sorted({f"{r['page']} (T={r['T']})" for r in records}))}
    report = {**meta, "cells": cells, "records": str(records_path.name)}
    atomic_write_json(Path(out) / f"{name}.json", report)
    atomic_write_text(Path(out) / f"{name}.md", markdown(cells, meta))
    return report


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-flashback", help="the FlashBack model (its base runs the others)")
    p.add_argument("--adapter", default=None, help="a flashback train adapter for --model (then a base model)")
    p.add_argument("--T", nargs="+", type=int, default=[1024], help="prompt + generated tokens")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated (or read) after the prompt")
    p.add_argument("--strides", nargs="+", default=["16", "once"], help="re-retrieval strides; 'once' for one retrieval")
    p.add_argument("--top-k", nargs="+", type=int, default=[1], help="passages per retrieval")
    p.add_argument("--regimes", nargs="+", default=["related", "copy"], choices=["related", "copy"])
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--pages", type=int, default=6, help="validation documents (pages) per cell")
    p.add_argument("--reinsert-stride", type=int, default=16,
                   help="also time FlashBack with keep_unchanged=False at this stride (0: never)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a shared 2-core machine: 1)")
    p.add_argument("--name", default="speed-real", help="<out>/<name>.{jsonl,json,md}")
    p.add_argument("--out", default=str(RESULTS), help="results folder (default: benchmarks/results)")
    p.add_argument("--summary-only", action="store_true", help="no timing: summarize results/<name>.jsonl again")
    args = p.parse_args(argv)
    for stride in args.strides:
        if stride != "once" and (not stride.isdigit() or int(stride) <= 0):
            p.error(f"--strides takes positive integers or 'once', got {stride!r}")
    if min(args.new_tokens, args.pages, args.threads, *args.top_k) <= 0:
        p.error("--new-tokens, --pages, --threads and --top-k must be positive")
    for total in args.T:
        if total <= args.new_tokens + 64:
            p.error(f"--T {total} leaves fewer than 64 prompt tokens before --new-tokens {args.new_tokens}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/speed.py --real " + " ".join(sys.argv[1:] if argv is None else argv)
    path = Path(args.out) / f"{args.name}.jsonl"
    try:
        if not args.summary_only:
            path = run(args)
        if not path.is_file():
            raise FlashBackError(f"no records at {path}")
        report = write_summary(path, args.name, command, args.model, Path(args.out))
    except FlashBackError as err:
        print(f"real_retrieval.py: error: {err}", file=sys.stderr)
        return 2
    print(markdown(report["cells"], report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
