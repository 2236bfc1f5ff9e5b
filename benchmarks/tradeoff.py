"""The trade-off users decide on: perplexity against seconds per generated token, for each way to retrieve.

    python benchmarks/tradeoff.py --speed benchmarks/results/speed-real.json      # both prefixes, both regimes
    python benchmarks/tradeoff.py --prefix 64 --windows 8 --strides 16 --name tradeoff-smoke --out /tmp/t

Rows, each scored on the same target tokens of the same windows (``--windows`` per regime, spread over the
validation documents of the quality benchmark's corpus, ``benchmarks/regimes.py``):

- ``none``: the base model, no retrieval;
- ``prepend once`` / ``FlashBack once``: one retrieval with the ``query_tokens`` before the first scored
  token (the question), its passage kept for all ``--span`` scored tokens: what LlamaIndex and LangChain
  users run today (prepend once), and its FlashBack counterpart;
- ``prepend every s`` (base model, In-Context RALM) and ``FlashBack every s`` (the shipped model, unchanged
  blocks kept) for each ``--strides`` value;
- ``--candidate NAME=SOURCE``: another FlashBack model or adapter with its own recorded layout, once and every
  ``--detail-stride`` tokens, with its paired ratio to the shipped model's row;
- at ``--detail-stride``: FlashBack re-inserting every block (``keep_unchanged=False``, the paper's: what
  keeping costs in quality) and FlashBack with its block at the positions after the prefix
  (``block_positions="after"``) instead of its trained "before".

A window is ``--prefix`` tokens of text, then ``--span`` scored tokens; the first retrieval point is at
``--prefix``. ``--prefix 64`` is the quality benchmark's setting (short contexts: what the shipped model was
trained on, windows of at most 256 positions); ``--prefix 768`` is the real-retrieval speed benchmark's
(a 768-token page, then 256 tokens). Perplexity intervals are 95% bootstrap intervals over windows; the
ratios to ``prepend once`` are paired (the same windows resampled for both). Seconds per generated token
come from the real-retrieval speed benchmark (``--speed``: its summary JSON, the ``replay`` protocol, where
every row reads the same real continuation and so retrieves the same passages), at T=1024 (``--speed-T``), top 1.

Everything is cached in the work folder (retrievals per stride, every row's per-window losses): a stopped
run resumes. Results: ``<out>/<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from harness import save_figure, sibling, write_report  # noqa: E402
from flashback_rag.io_utils import atomic_write_text, cache_root  # noqa: E402
from flashback_rag.models import SHIPPED  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = "prepend_once"




def log(message: str) -> None:
    print(f"tradeoff: {message}", file=sys.stderr, flush=True)


def plan_rows(strides: list[int], detail: int, candidates: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every row: its key, label, which model, the layout and the retrieval schedule."""
    rows = [{"key": "none", "label": "no retrieval", "model": "base", "pattern": "none", "stride": None},
            {"key": "prepend_once", "label": "prepend once (retrieve, then generate)", "model": "base",
             "pattern": "prepend", "stride": "once"},
            {"key": "flashback_once", "label": "FlashBack once", "model": "flashback", "pattern": "append",
             "stride": "once"}]
    for s in strides:
        rows += [{"key": f"prepend_s{s}", "label": f"prepend every {s}", "model": "base", "pattern": "prepend",
                  "stride": s},
                 {"key": f"flashback_s{s}", "label": f"FlashBack every {s}", "model": "flashback",
                  "pattern": "append", "stride": s}]
    if detail:
        rows += [{"key": f"flashback_reinsert_s{detail}", "label": f"FlashBack every {detail}, every block re-inserted",
                  "model": "flashback", "pattern": "append", "stride": detail, "keep_unchanged": False},
                 {"key": f"flashback_after_s{detail}", "label": f"FlashBack every {detail}, block positions after",
                  "model": "flashback", "pattern": "append", "stride": detail, "block_positions": "after"}]
    for name in candidates or {}:          # another FlashBack model or adapter, with its own recorded layout
        rows += [{"key": f"{name}_once", "label": f"{name} once", "model": name, "pattern": "append",
                  "stride": "once", "candidate": True},
                 {"key": f"{name}_s{detail or 16}", "label": f"{name} every {detail or 16}", "model": name,
                  "pattern": "append", "stride": detail or 16, "candidate": True}]
    return rows


def model_tag(source: str) -> str:
    """A short hash of a FlashBack model's weights (a shipped name or an adapter folder): cached rows of an
    earlier version of the model are not reused."""
    import hashlib

    from flashback_rag.models import shipped_adapter

    folder = shipped_adapter(source) if source in SHIPPED else Path(source)
    digest = hashlib.sha1()
    for name in ("adapter_model.safetensors", "flashback.json"):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:10]


def windows(tokens: list[int], length: int, count: int) -> list[int]:
    """Starts of ``count`` non-overlapping windows of ``length`` tokens, evenly spread over ``tokens``."""
    from flashback_rag.training.prepare import spread

    return spread(list(range(0, len(tokens) - length + 1, length)), count)


def window_records(tokens, starts, retriever, tokenizer, stride: int, prefix: int, span: int, trained, cache: Path):
    """Retrieval records of the windows at one stride (cached): points every ``stride`` after ``prefix``."""
    from flashback_rag.training.prepare import PrepareConfig, make_windows

    if cache.is_file():
        return [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
    block = trained.top_k * trained.doc_tokens + 2 + trained.echo_tokens
    cfg = PrepareConfig(stride=stride, query_tokens=trained.query_tokens, doc_tokens=trained.doc_tokens, top_k=1,
                        max_positions=prefix + span + block, echo_tokens=trained.echo_tokens, min_prefix=prefix,
                        passage_template=trained.passage_template)
    points = list(range(prefix, prefix + span - stride + 1, stride))
    records = make_windows(tokens, retriever, tokenizer, cfg, [(start, points) for start in starts])
    atomic_write_text(cache, "".join(json.dumps(r) + "\n" for r in records))
    return records


def run(args) -> dict[str, Any]:
    from flashback_rag.indexing import load_tokenizer
    from flashback_rag.models import base_alias, load_model
    from flashback_rag.training.evaluate import window_token_nll
    from flashback_rag.training.prepare import token_stream

    torch.set_num_threads(args.threads)
    regimes = sibling("regimes")
    from flashback_rag import demo

    tokenizer = load_tokenizer(base_alias(args.model))
    parts, retrievers, corpus_name = regimes.eval_retrievers(tokenizer)
    flash_lm, flash_tok, trained = demo.load_flashback_model(args.model)
    base = load_model(base_alias(args.model))
    models = {"base": base, "flashback": (flash_lm, flash_tok)}
    layouts = {"flashback": trained}
    for name, source in args.candidate.items():
        lm, tok, layouts[name] = (demo.load_flashback_model(source) if source in SHIPPED
                                  else demo.load_flashback_model(base_alias(args.model), adapter=source))
        models[name] = (lm, tok)
    stream = token_stream(parts["validation"], tokenizer)
    work = Path(args.work or cache_root() / "tradeoff")
    rows = plan_rows(args.strides, args.detail_stride, args.candidate)
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "command": "python benchmarks/tradeoff.py " + " ".join(sys.argv[1:]),
                              "corpus": corpus_name, "model": args.model, "settings": trained.to_dict(),
                              "threads": args.threads, "span": args.span, "rows": rows, "results": []}
    for prefix in args.prefix:
        starts = windows(stream, prefix + args.span, args.windows)
        for regime in args.regimes:
            folder = work / f"p{prefix}-span{args.span}-w{len(starts)}-{regime}"
            folder.mkdir(parents=True, exist_ok=True)
            sums = {}
            for row in rows:
                source = args.model if row["model"] == "flashback" else args.candidate.get(row["model"])
                cached = folder / (f"{row['key']}.pt" if source is None else f"{row['key']}-{model_tag(source)}.pt")
                if cached.is_file():
                    sums[row["key"]] = torch.load(cached)
                    continue
                stride = 16 if row["stride"] in (None, "once") else row["stride"]
                records = window_records(stream, starts, retrievers[regime], tokenizer, stride, prefix, args.span,
                                         trained, folder / f"windows-s{stride}.jsonl")
                model, tok = models[row["model"]]
                flash = row["model"] != "base"
                own = layouts.get(row["model"], trained)
                layout = dict(markers=flash and own.markers, echo=own.echo_tokens if flash else 0,
                              block_positions=row.get("block_positions", own.block_positions) if flash else "after",
                              keep_unchanged=row.get("keep_unchanged", True),
                              retrieve="once" if row["stride"] == "once" else "periodic")
                nll = window_token_nll(model, tok, records, row["pattern"], top_k=1, batch_size=args.batch_size,
                                       **layout)                                              # (points, stride)
                per_window = nll.view(len(records), -1).double().sum(1)                        # (windows,)
                torch.save(per_window, cached)
                sums[row["key"]] = per_window
                log(f"prefix {prefix} {regime:7s} {row['label']:48s} ppl {math.exp(float(per_window.sum()) / (len(records) * args.span)):.3f}")
            report["results"] += summarize(sums, rows, prefix, regime, args.span, args.bootstrap)
    if args.speed:
        attach_speed(report, Path(args.speed), args.speed_T)
    return report


def summarize(sums: dict[str, torch.Tensor], rows, prefix: int, regime: str, span: int, samples: int):
    from flashback_rag.training.intervals import bootstrap_means, ppl_interval, ratio_interval

    counts = torch.full_like(next(iter(sums.values())), float(span))
    draws = bootstrap_means(sums, counts, samples)
    out = []
    for row in rows:
        key = row["key"]
        entry = {"prefix": prefix, "regime": regime, "key": key, "label": row["label"], "stride": row["stride"],
                 "windows": int(counts.numel()), "tokens": int(counts.sum()),
                 "ppl": math.exp(float(sums[key].sum() / counts.sum())), "ppl_ci": ppl_interval(draws[key])}
        entry["ratio_prepend_once"] = ratio_interval(sums[key], sums[REFERENCE], counts, draws[key], draws[REFERENCE])
        if row["model"] == "flashback" and isinstance(row["stride"], int) and f"prepend_s{row['stride']}" in sums:
            ref = f"prepend_s{row['stride']}"
            entry["ratio_prepend_same_stride"] = ratio_interval(sums[key], sums[ref], counts, draws[key], draws[ref])
        if key.startswith(("flashback_reinsert", "flashback_after")) or row.get("candidate"):
            ref = "flashback_once" if row["stride"] == "once" else f"flashback_s{row['stride']}"
            entry["ratio_flashback_same_stride"] = ratio_interval(sums[key], sums[ref], counts, draws[key], draws[ref])
        out.append(entry)
    return out


def attach_speed(report: dict[str, Any], path: Path, total: int = 1024) -> None:
    """Seconds per generated token of each row from the real-retrieval benchmark (replay, T=``total``, top 1)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    by = {(c["regime"], c["stride"]): c for c in cells if c["protocol"] == "replay" and c["T"] == total
          and c["top_k"] == 1}
    report["speed_source"] = f"{path.name}, T={total}"
    for entry in report["results"]:
        stride = "once" if entry["stride"] == "once" else str(entry["stride"] or 16)
        cell = by.get((entry["regime"], stride))
        if cell is None:
            continue
        name = ("none_s_per_token" if entry["key"] == "none" else
                "prepend_s_per_token" if entry["key"].startswith("prepend") else
                "flashback_s_per_token" if entry["key"] in (f"flashback_s{entry['stride']}", "flashback_once") else None)
        if name and name in cell:
            entry["s_per_token"] = cell[name]


def _ci(values) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# The trade-off: perplexity against time per token ({report['model']})", "",
             f"Measured {report['date']} on CPU ({report['threads']} torch thread(s)); corpus {report['corpus']} "
             f"(validation documents); command `{report['command']}`.", "",
             "Every row of a table scores the same target tokens of the same windows. Ratios are to `prepend once` "
             "(retrieve with the text before the first scored token, put the passage before the text, decode: the "
             "usual RAG), with 95% paired bootstrap intervals over windows. Seconds per token: the real-retrieval "
             "speed benchmark's replay protocol, top 1 (" + report.get("speed_source", "not attached") + ").", ""]
    for prefix in sorted({e["prefix"] for e in report["results"]}):
        for regime in ("related", "copy"):
            rows = [e for e in report["results"] if e["prefix"] == prefix and e["regime"] == regime]
            if not rows:
                continue
            lines += [f"## {regime} regime, {prefix}-token prefix ({rows[0]['windows']} windows, {rows[0]['tokens']} "
                      "scored tokens per row)", "",
                      "| row | ppl [95% CI] | ratio to prepend once | FlashBack / prepend, same stride | ms per token |",
                      "|---|---|---|---|---|"]
            for e in rows:
                r, same = e["ratio_prepend_once"], e.get("ratio_flashback_same_stride") or e.get("ratio_prepend_same_stride")
                ratio = "1" if e["key"] == REFERENCE else f"{r[0]:.3f} {_ci(r[1:])}"
                same_text = f"{same[0]:.3f} {_ci(same[1:])}" if same else "-"
                ms = f"{e['s_per_token'] * 1000:.1f}" if "s_per_token" in e else "-"
                lines.append(f"| {e['label']} | {e['ppl']:.3f} {_ci(e['ppl_ci'])} | {ratio} | {same_text} | {ms} |")
            lines.append("")
    lines += ["The fourth column of the re-inserted and block-after rows is their ratio to FlashBack at the same "
              "stride (kept blocks, block positions before).", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return False
    panels = [(p, r) for p in sorted({e["prefix"] for e in report["results"]}) for r in ("related", "copy")
              if any(e["prefix"] == p and e["regime"] == r for e in report["results"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (prefix, regime) in zip(axes[0], panels):
        rows = [e for e in report["results"] if e["prefix"] == prefix and e["regime"] == regime]
        timed = [e for e in rows if "s_per_token" in e]
        for family, color in (("prepend_s", "tab:red"), ("flashback_s", "tab:green")):
            line = sorted((e for e in timed if e["key"].startswith(family)), key=lambda e: e["stride"])
            if line:
                ax.plot([e["s_per_token"] * 1000 for e in line], [e["ppl"] for e in line], "-o", color=color,
                        label=("prepend" if family == "prepend_s" else "FlashBack") + " every s")
                for e in line:
                    ax.annotate(str(e["stride"]), (e["s_per_token"] * 1000, e["ppl"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
        for key, marker, color in (("none", "s", "tab:gray"), ("prepend_once", "^", "tab:red"),
                                   ("flashback_once", "^", "tab:green")):
            e = next((e for e in timed if e["key"] == key), None)
            if e:
                ax.plot([e["s_per_token"] * 1000], [e["ppl"]], marker, color=color, markersize=8, label=e["label"])
        ax.set_xlabel(f"ms per generated token ({report.get('speed_source', 'real retrieval')})")
        ax.set_ylabel("perplexity")
        ax.set_title(f"{regime}, {prefix}-token prefix", fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    save_figure(fig, path)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-flashback")
    p.add_argument("--prefix", nargs="+", type=int, default=[64, 768], help="text tokens before the first scored token")
    p.add_argument("--span", type=int, default=256, help="scored tokens per window (a multiple of every stride)")
    p.add_argument("--strides", nargs="+", type=int, default=[8, 16, 32, 64])
    p.add_argument("--detail-stride", type=int, default=16, help="stride of the re-insert and block-after rows (0: none)")
    p.add_argument("--windows", type=int, default=48, help="windows per regime")
    p.add_argument("--regimes", nargs="+", default=["related", "copy"], choices=["related", "copy"])
    p.add_argument("--candidate", nargs="*", default=[], metavar="NAME=SOURCE",
                   help="also score another FlashBack model (a shipped name, or a flashback train adapter folder for "
                        "the base model) with its own recorded layout, once and every --detail-stride tokens")
    p.add_argument("--speed", default=None, help="the real-retrieval benchmark's summary JSON (seconds per token)")
    p.add_argument("--speed-T", type=int, default=1024, help="which T of --speed to take the times from")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="cache folder (default: the flashback cache)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default="tradeoff-smollm2")
    args = p.parse_args(argv)
    try:
        args.candidate = dict(item.split("=", 1) for item in args.candidate)
    except ValueError:
        p.error("--candidate takes NAME=SOURCE")
    for s in args.strides + ([args.detail_stride] if args.detail_stride else []):
        if s <= 0 or args.span % s:
            p.error(f"--span {args.span} must be a positive multiple of every stride (got {s})")
    if min(args.prefix) < 32 or args.windows <= 0:
        p.error("--prefix must be at least 32 tokens (the query) and --windows positive")
    report = run(args)
    write_report(args.out, args.name, report, markdown, plot)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
