"""The paper's perplexity table on SmolLM2-135M and real text, in two retrieval regimes, with intervals.

    python benchmarks/quality.py             # the full table (about 80 min on 2 CPU cores); benchmarks/results/
    python benchmarks/quality.py --quick     # the whole pipeline in a few minutes (numbers mean little)
    python benchmarks/quality.py --rows none append_echo --regimes copy    # a subset

Corpus: the Python 3.11 documentation sources (reST, from the Debian package python3.11-doc, fetched with
``apt-get download`` + ``dpkg-deb -x``; falls back to the standard library's own docs). Documents are split
three ways by a seeded hash of their title: *index* documents, *train* documents and *validation* documents.

Two regimes, every row scored in both, on the same target tokens with the same preceding text:

- ``related``: the index holds only the index documents, disjoint from the text being predicted;
- ``copy``: the index also holds the evaluated documents (RAG over a corpus that contains the answer: the
  retrieved chunk may contain the continuation). This is where a layout shows whether the model *reads*
  its passage: prepend's perplexity falls far below no retrieval here.

Trained rows learn from both regimes at once (half their windows retrieve from the index documents, half
from an index that also holds the training documents), packed (``flashback_rag/training/packing.py``).
Validation: at least ``--val-tokens`` target tokens per regime, in windows of the validation documents.
For every row: its perplexity with a 95% interval, and its perplexity ratio to the ``none + LoRA``
control and to ``prepend + LoRA + markers``, each with a 95% *paired* bootstrap interval (windows are
resampled, the same ones for both rows: tokens of one window are not independent). The mean loss at each
of the ``stride`` positions after the retrieval point shows where the appended layout loses the thread.

Every row's result and adapter are cached in the work folder: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from harness import write_report  # noqa: E402

from flashback_rag.corpus import chunk_documents  # noqa: E402
from flashback_rag.io_utils import atomic_write_json, cache_root  # noqa: E402
from flashback_rag.python_doc_corpus import python_docs, split_three_ways  # noqa: E402

REGIMES = ("related", "copy")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    pattern: str
    markers: bool
    trained: bool
    echo: bool = False        # uses --echo-tokens
    echo_k: int | None = None  # ... or this echo length (the untrained echo sweep)
    before: bool = False      # block_positions="before": the block at the positions before the first token
    prefix: bool = False      # trained with the prefix loss (the packed window's own tokens, --prefix-loss-weight)

    @property
    def block_positions(self) -> str:
        return "before" if self.before else "after"

    def echo_tokens(self, default: int) -> int:
        return (self.echo_k if self.echo_k is not None else default) if self.echo else 0


ROWS = [
    Row("none", "no retrieval", "none", False, False),
    Row("none_lora", "no retrieval + LoRA (control)", "none", False, True),
    Row("prepend", "prepend (no training)", "prepend", False, False),
    Row("prepend_lora_markers", "prepend + LoRA + markers", "prepend", True, True),
    Row("append_naive", "append (naive)", "append", False, False),
    Row("append_lora", "append + LoRA", "append", False, True),
    Row("append_lora_markers", "append + LoRA + markers (FlashBack, paper)", "append", True, True),
    Row("append_echo", "append + echo (no training)", "append", True, False, echo=True),
    Row("append_echo_lora_markers", "append + echo + LoRA + markers (FlashBack + echo)", "append", True, True,
        echo=True),
    Row("append_before", "append + echo, block before (no training)", "append", True, False, echo=True, before=True),
    Row("append_before_lora_markers", "append + echo + LoRA + markers, block before (FlashBack + echo + positions)",
        "append", True, True, echo=True, before=True),
    # The prefix loss: the same windows, each window's own tokens scored too (plain language modelling on the
    # text whose cache decoding computes without passages). Its control is trained on the same tokens.
    Row("none_lora_prefix", "no retrieval + LoRA, prefix loss (control on the same tokens)", "none", False, True,
        prefix=True),
    Row("append_before_lora_markers_prefix", "append + echo + LoRA + markers, block before, prefix loss",
        "append", True, True, echo=True, before=True, prefix=True),
    Row("append_echo_lora_markers_prefix", "append + echo + LoRA + markers, prefix loss (block after)",
        "append", True, True, echo=True, prefix=True),
]
CONTROL, CONTROL_PREFIX, UPPER = "none_lora", "none_lora_prefix", "prepend_lora_markers"
REFERENCES = (CONTROL, CONTROL_PREFIX, UPPER)


# ----------------------------------------------------------------------------- corpus and data
def build_data(args, tokenizer, work: Path, parts) -> dict[str, Path]:
    """Three BM25 indexes and four prepared folders (train / validation x related / copy)."""
    from flashback_rag.retrievers import BM25Retriever
    from flashback_rag.training.prepare import PrepareConfig, prepare

    # related: index documents only; copy (training): + the training documents; copy (evaluation): + all
    contents = {"related": parts["index"], "copy-train": parts["index"] + parts["train"],
                "copy-eval": parts["index"] + parts["train"] + parts["validation"]}
    indexes = {}
    for name, docs in contents.items():
        folder = work / f"index-{name}"
        if not (folder / "manifest.json").is_file():
            chunks = list(chunk_documents(docs, tokenizer, args.chunk_tokens))
            BM25Retriever.from_chunks(chunks, manifest_extra={"chunking": {"chunk_tokens": args.chunk_tokens}}
                                      ).save(folder)
        indexes[name] = BM25Retriever.load(folder)
    cfg = PrepareConfig(stride=args.stride, query_tokens=args.query_tokens, doc_tokens=args.doc_tokens,
                        max_positions=args.max_positions, echo_tokens=args.echo_tokens, min_prefix=args.min_prefix,
                        seed=args.seed)
    points = lambda tokens: -(-tokens // args.stride)  # noqa: E731
    plan = {"train-related": ("train", "related", args.train_points // 2),
            "train-copy": ("train", "copy-train", args.train_points - args.train_points // 2),
            "val-related": ("validation", "related", points(args.val_tokens)),
            "val-copy": ("validation", "copy-eval", points(args.val_tokens))}
    out = {}
    for name, (split, index, cap) in plan.items():
        out[name] = work / f"data-{name}"
        prepare({"train": parts[split]}, indexes[index], tokenizer, out[name], cfg, max_examples={"train": cap},
                show_progress=False)
    return out


# ----------------------------------------------------------------------------- statistics
def window_ids(records) -> torch.Tensor:
    """Which window each scored point belongs to (the bootstrap's resampling unit)."""
    return torch.tensor([w for w, r in enumerate(records) for _ in r["points"]])


def bootstrap(nll: dict[str, torch.Tensor], windows: torch.Tensor, samples: int, seed: int,
              references: tuple[str, ...] = REFERENCES):
    """Per row: ppl interval; per row and reference: the paired interval of the perplexity ratio.

    ``nll[key]`` is ``(points, stride)``; windows are resampled with replacement, the same draw for all
    rows, so a ratio's interval reflects only how the two rows differ on the same text.
    """
    from flashback_rag.training.intervals import bootstrap_means, ppl_interval, ratio_interval

    n_windows = int(windows.max()) + 1
    counts = torch.bincount(windows, minlength=n_windows).double() * next(iter(nll.values())).shape[1]
    sums = {k: torch.zeros(n_windows, dtype=torch.float64).index_add_(0, windows, v.double().sum(1))
            for k, v in nll.items()}
    means = bootstrap_means(sums, counts, samples, seed)
    out = {}
    for k in nll:
        out[k] = {"ppl_ci": ppl_interval(means[k])}
        for ref in references:
            if ref in means:
                out[k][f"ratio_{ref}"] = ratio_interval(sums[k], sums[ref], counts, means[k], means[ref])
    return out


# ----------------------------------------------------------------------------- the run
def machine(threads: int) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "cores": os.cpu_count(), "threads": threads, "load_average": os.getloadavg()}


def run(args) -> dict:
    from flashback_rag.models import load_model
    from flashback_rag.training.evaluate import window_token_nll
    from flashback_rag.training.prepare import read_windows
    from flashback_rag.training.trainer import TrainConfig, train
    from flashback_rag.training.tuning import LoraSettings

    torch.set_num_threads(args.threads)
    names = ("model", "stride", "query_tokens", "doc_tokens", "chunk_tokens", "max_positions", "echo_tokens",
             "min_prefix", "train_points", "val_tokens", "steps", "batch_size", "learning_rate", "marker_lr",
             "marker_init", "seed", "prefix_loss_weight", "keep_unchanged")
    settings = {k: getattr(args, k) for k in names}
    # (a setting at its default stays out of the key: work folders made before it existed keep their names)
    key = hashlib.sha1(json.dumps({k: v for k, v in settings.items()
                                   if (k, v) not in (("prefix_loss_weight", 1.0), ("keep_unchanged", False))},
                                  sort_keys=True).encode()).hexdigest()[:10]
    base_work = Path(args.work or cache_root() / "quality")
    work = base_work / key
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    docs, corpus_name = python_docs(base_work)
    parts = split_three_ways(docs, args.seed, train_share=0.3, val_share=0.1)
    _, tokenizer = load_model(args.model, device="cpu")
    data = build_data(args, tokenizer, work, parts)
    val = {regime: read_windows(data[f"val-{regime}"] / "train") for regime in REGIMES}
    lengths = [len(p) for v in val.values() for r in v for found in r["passages"] for p in found]
    passages = {"count": len(lengths), "mean_tokens": sum(lengths) / max(1, len(lengths)),
                "cut_share": sum(n >= args.doc_tokens for n in lengths) / max(1, len(lengths))}
    prep_seconds = time.perf_counter() - t0
    log(f"{corpus_name}: {len(parts['index'])} index / {len(parts['train'])} train / {len(parts['validation'])} "
        f"validation documents; validation windows {', '.join(f'{r} {len(v)}' for r, v in val.items())} "
        f"({prep_seconds:.0f}s)")

    rows = [r for r in ROWS if r.key in args.rows] + [
        Row(f"append_echo{k}", f"append + echo {k} (no training)", "append", True, False, echo=True, echo_k=k)
        for k in args.echo_sweep if k != args.echo_tokens]
    results, nll = {}, {regime: {} for regime in REGIMES}
    base_model = None
    for row in rows:
        cached = work / f"row-{row.key}.json"
        tensors = work / f"row-{row.key}.pt"
        if cached.is_file() and tensors.is_file():
            results[row.key] = json.loads(cached.read_text())
            saved = torch.load(tensors)
            for regime in args.regimes:
                if regime in saved:
                    nll[regime][row.key] = saved[regime]
            if all(regime in saved for regime in args.regimes):
                continue
        started = time.perf_counter()
        echo = row.echo_tokens(args.echo_tokens)
        record = {"key": row.key, "label": row.label, "pattern": row.pattern, "markers": row.markers,
                  "trained": row.trained, "echo_tokens": echo, "block_positions": row.block_positions,
                  "prefix_loss_weight": args.prefix_loss_weight if row.prefix else 0.0}
        if row.key in args.use_adapter:
            adapter = Path(args.use_adapter[row.key])
            record.update(check_reused(adapter, row, args))
            model, tok = load_model(args.model, device="cpu", adapter=adapter)
            metrics = json.loads((adapter / "metrics.json").read_text()) if (adapter / "metrics.json").is_file() else {}
            record.update(train_seconds=metrics.get("train_runtime"), train_windows=metrics.get("train_examples"),
                          train_loss=[round(h["loss"], 4) for h in metrics.get("log_history", []) if "loss" in h],
                          adapter=str(adapter), reused=True)
        elif row.trained:
            adapter = work / f"adapter-{row.key}"
            cfg = TrainConfig(model=args.model, data=[str(data["train-related"]), str(data["train-copy"])],
                              out=str(adapter), pattern=row.pattern, markers=row.markers, echo_tokens=echo,
                              block_positions=row.block_positions, keep_unchanged=args.keep_unchanged,
                              prefix_loss_weight=args.prefix_loss_weight if row.prefix else 0.0,
                              lora=LoraSettings(), learning_rate=args.learning_rate, marker_lr=args.marker_lr,
                              marker_init=args.marker_init, batch_size=args.batch_size, max_steps=args.steps,
                              warmup_ratio=0.1, logging_steps=max(1, args.steps // 10), device="cpu",
                              seed=args.seed, report_to="none")
            model, tok, metrics = train(cfg, show_progress=False)
            record.update(steps=args.steps, batch_size=args.batch_size)
            record["train_seconds"] = metrics["train_runtime"]
            record["train_windows"] = metrics["train_examples"]
            record["train_loss"] = [round(h["loss"], 4) for h in metrics["log_history"] if "loss" in h]
            record["adapter"] = str(adapter)
        else:
            if base_model is None:
                base_model = load_model(args.model, device="cpu")
            model, tok = base_model
        saved = {}
        for regime in args.regimes:
            t = time.perf_counter()
            saved[regime] = nll[regime][row.key] = window_token_nll(
                model, tok, val[regime], row.pattern, row.markers, echo=echo, batch_size=args.eval_batch_size,
                block_positions=row.block_positions, keep_unchanged=args.keep_unchanged)
            record[f"{regime}_eval_seconds"] = round(time.perf_counter() - t, 1)
        record["seconds"] = round(time.perf_counter() - started, 1)
        torch.save(saved, tensors)
        atomic_write_json(cached, record)
        results[row.key] = record
        log(f"{row.label:52s} " + "  ".join(f"{r} {math.exp(float(nll[r][row.key].mean())):7.3f}"
                                             for r in args.regimes) + f"  ({record['seconds']:.0f}s)")
        if row.trained:
            del model

    report_rows = []
    for regime in args.regimes:
        stats = bootstrap(nll[regime], window_ids(val[regime]), args.bootstrap, args.seed,
                          REFERENCES + tuple(args.ratio_to))
        for row in rows:
            values = nll[regime][row.key]
            report_rows.append({**results[row.key], "regime": regime, "ppl": math.exp(float(values.mean())),
                                "tokens": int(values.numel()), "windows": len(val[regime]),
                                "nll_by_position": [round(float(v), 4) for v in values.mean(0)],
                                **stats[row.key]})
    return {"benchmark": "perplexity table (FlashBack, arXiv 2405.04065), two retrieval regimes",
            "ratio_to": list(args.ratio_to),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
            "corpus": corpus_name, "documents": {k: len(v) for k, v in parts.items()}, "settings": settings,
            "regimes": list(args.regimes), "machine": machine(args.threads), "passages": passages,
            "total_seconds": time.perf_counter() - t0, "rows": report_rows}


def check_reused(adapter: Path, row: Row, args) -> dict:
    """An adapter given with --use-adapter must have been trained as this row would be: the same layout,
    data settings and optimiser. Its budget (steps x batch) may differ; it is returned and shown."""
    from flashback_rag.training.adapters import read_meta

    # (older adapters predate these settings)
    training = {"block_positions": "after", "prefix_loss_weight": 0.0, **read_meta(adapter).get("training", {})}
    prepared = training.get("prepared", {})
    want = {"pattern": row.pattern, "markers": row.markers, "echo_tokens": row.echo_tokens(args.echo_tokens),
            "block_positions": row.block_positions,
            "prefix_loss_weight": args.prefix_loss_weight if row.prefix else 0.0,
            "learning_rate": args.learning_rate, "marker_lr": args.marker_lr, "marker_init": args.marker_init,
            "seed": args.seed, "model": args.model}
    want_prepared = {"stride": args.stride, "query_tokens": args.query_tokens, "doc_tokens": args.doc_tokens,
                     "max_positions": args.max_positions, "echo_tokens": args.echo_tokens,
                     "min_prefix": args.min_prefix, "seed": args.seed}
    wrong = [f"{k}={training.get(k)!r} (want {v!r})" for k, v in want.items() if training.get(k) != v]
    wrong += [f"prepared {k}={prepared.get(k)!r} (want {v!r})" for k, v in want_prepared.items()
              if prepared.get(k) != v]
    if wrong:
        raise SystemExit(f"quality: {adapter} was not trained as row {row.key}: {'; '.join(wrong)}")
    return {"steps": training.get("max_steps"), "batch_size": training.get("batch_size"),
            "copy_unlikelihood": training.get("copy_unlikelihood", 0.0),
            "trained_keep_unchanged": training.get("keep_unchanged", False)}


def log(message: str) -> None:
    print(f"quality: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- reports
def _ci(values) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def _ratio(row, ref) -> str:
    r = row.get(f"ratio_{ref}")
    if r is None or row["key"] == ref:
        return "1" if row["key"] == ref else "-"
    return f"{r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]"


def _label(row: dict, settings: dict) -> str:
    """The row's label, with its training budget when it is not the table's."""
    steps, batch = row.get("steps"), row.get("batch_size")
    if row.get("trained") and steps and (steps, batch) != (settings["steps"], settings["batch_size"]):
        return f"{row['label']} [{steps} x {batch} windows]"
    return row["label"]


def markdown(report: dict) -> str:
    s = report["settings"]
    m = report["machine"]
    lines = [
        f"# Perplexity table: {s['model']} on {report['corpus']}", "",
        f"Measured {report['date']} on CPU ({m['cores']} cores, {m['threads']} torch threads, load average "
        f"{', '.join(f'{v:.1f}' for v in m['load_average'])} at the end); total "
        f"{report['total_seconds'] / 60:.1f} min.", "",
        f"Command: `{report['command']}`", "",
        f"Setting: stride {s['stride']}, query {s['query_tokens']} tokens, BM25 over {s['chunk_tokens']}-token chunks, "
        f"passages of up to {s['doc_tokens']} tokens (title line + chunk), context {s['max_positions']} "
        f"positions, echo {s['echo_tokens']} tokens on the echo rows. Trained rows: LoRA r=16, alpha=32, dropout "
        f"0.05 on the attention projections (+ the two marker rows at lr {s['marker_lr']}, init "
        f"`{s['marker_init']}`), {s['steps']} steps x {s['batch_size']} packed windows (lr {s['learning_rate']}, "
        f"cosine, 10% warm-up), half retrieving from the index documents, half from an index that also holds "
        f"the training documents; rows marked *prefix loss* add {s.get('prefix_loss_weight', 1.0):g} x the mean loss "
        f"of each packed window's own tokens. Validation passages: {report['passages']['mean_tokens']:.1f} tokens on average, "
        f"{report['passages']['cut_share']:.1%} cut at the cap. "
        f"Validation documents: {report['documents']['validation']}; the intervals "
        "are 95% bootstrap intervals over windows (paired for the ratios).", "",
    ]
    for regime in report["regimes"]:
        rows = [r for r in report["rows"] if r["regime"] == regime]
        tokens = rows[0]["tokens"] if rows else 0
        lines += [f"## Regime `{regime}` ({tokens} target tokens per row, {rows[0]['windows']} windows)", "",
                  "| row | ppl [95% CI] | ratio to control (none + LoRA) | ratio to control with prefix loss | "
                  "ratio to prepend + LoRA + markers | loss at +0 / +1 / last |"
                  + "".join(f" ratio to {ref} |" for ref in report.get("ratio_to", [])),
                  "|---|---|---|---|---|---|" + "---|" * len(report.get("ratio_to", []))]
        for r in rows:
            pos = r["nll_by_position"]
            lines.append(f"| {_label(r, s)} | {r['ppl']:.3f} {_ci(r['ppl_ci'])} | {_ratio(r, CONTROL)} | "
                         f"{_ratio(r, CONTROL_PREFIX)} | {_ratio(r, UPPER)} | {pos[0]:.2f} / {pos[1]:.2f} / "
                         f"{pos[-1]:.2f} |" + "".join(f" {_ratio(r, ref)} |" for ref in report.get("ratio_to", [])))
        lines.append("")
    lines += ["Perplexity of the target tokens only (marker logits masked); all rows of a regime score the same "
              "tokens with the same preceding text, only the passage layout and the weights differ. A ratio "
              "below 1 means lower perplexity than the reference; an interval that excludes 1 is a difference "
              "the data can tell.", ""]
    positions = [r for r in report["rows"]]
    if positions:
        lines += ["Mean loss (nats) at each position after the retrieval point:", "",
                  "| regime | row | " + " | ".join(f"+{i}" for i in range(len(positions[0]["nll_by_position"])))
                  + " |", "|---|---|" + "---|" * len(positions[0]["nll_by_position"])]
        for r in positions:
            lines.append(f"| {r['regime']} | {r['key']} | " + " | ".join(f"{v:.2f}" for v in r["nll_by_position"])
                         + " |")
        lines.append("")
    trained = [r for r in report["rows"] if r.get("train_loss") and r["regime"] == report["regimes"][0]]
    if trained:
        lines += ["Training (logged loss, first -> last tenth of the steps; seconds):", ""]
        for r in trained:
            lines.append(f"- {_label(r, report['settings'])}: {r['train_loss'][0]:.3f} -> {r['train_loss'][-1]:.3f}, "
                         f"{r['train_windows']} windows, {r['train_seconds']:.0f} s")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = report["regimes"]
    fig, axes = plt.subplots(1, len(regimes), figsize=(6.5 * len(regimes), 4.6), squeeze=False, sharey=True)
    for ax, regime in zip(axes[0], regimes):
        for r in (r for r in report["rows"] if r["regime"] == regime):
            style = "--" if not r["trained"] else "-"
            ax.plot(range(len(r["nll_by_position"])), r["nll_by_position"], style, marker=".", label=r["label"])
        ax.set_title(f"regime: {regime}")
        ax.set_xlabel("position after the retrieval point (tokens)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean loss (nats)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{report['settings']['model']}: loss by position after the passage block", fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--query-tokens", type=int, default=32)
    p.add_argument("--chunk-tokens", type=int, default=64, help="index chunk size (tokens)")
    p.add_argument("--doc-tokens", type=int, default=80, help="passage cap: the chunk plus its title line")
    p.add_argument("--max-positions", type=int, default=256)
    p.add_argument("--echo-tokens", type=int, default=16, help="echo of the echo rows")
    p.add_argument("--min-prefix", type=int, default=64, help="window tokens before its first retrieval point")
    p.add_argument("--train-points", type=int, default=600, help="retrieval points to train on (both regimes)")
    p.add_argument("--val-tokens", type=int, default=8192, help="target tokens scored per regime")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4, help="packed windows per step")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--marker-lr", type=float, default=None, help="default: flashback train's")
    p.add_argument("--marker-init", default=None, help="default: flashback train's")
    p.add_argument("--prefix-loss-weight", type=float, default=1.0,
                   help="flashback train --prefix-loss-weight of the rows trained with the prefix loss")
    p.add_argument("--ratio-to", nargs="*", default=[], choices=[r.key for r in ROWS], metavar="ROW",
                   help="also give every row's paired perplexity ratio to these rows")
    p.add_argument("--keep-unchanged", action="store_true",
                   help="append rows: points that find the passage in place keep its block, in training and scoring "
                        "(decoding's default; the recorded tables re-insert every block, the paper's layout)")
    p.add_argument("--eval-batch-size", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--echo-sweep", type=int, nargs="*", default=[4, 32],
                   help="also score untrained append + echo with these echo lengths")
    p.add_argument("--rows", nargs="+", default=[r.key for r in ROWS], choices=[r.key for r in ROWS])
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    p.add_argument("--use-adapter", nargs="*", default=[], metavar="ROW=DIR",
                   help="score this adapter for a trained row instead of training it (its recorded settings "
                        "must be the row's: e.g. the shipped model made by training/smollm2_flashback.sh)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--work", default=None, help="work folder (default: the flashback cache)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="quality_smollm2")
    p.add_argument("--quick", action="store_true", help="a tiny end-to-end pass (a few minutes)")
    args = p.parse_args(argv)
    from flashback_rag.models import DEFAULT_MARKER_INIT
    from flashback_rag.training.trainer import DEFAULT_MARKER_LR

    args.marker_lr = args.marker_lr or DEFAULT_MARKER_LR
    args.marker_init = args.marker_init or DEFAULT_MARKER_INIT
    try:
        args.use_adapter = dict(item.split("=", 1) for item in args.use_adapter)
    except ValueError:
        p.error("--use-adapter takes ROW=DIR")
    unknown = set(args.use_adapter) - {r.key for r in ROWS if r.trained}
    if unknown:
        p.error(f"--use-adapter: not a trained row: {', '.join(sorted(unknown))}")
    if args.quick:
        args.train_points, args.val_tokens, args.steps, args.batch_size = 40, 320, 2, 2
        args.name += "_quick"
    report = run(args)
    write_report(args.out, args.name, report, markdown, plot)
    print(json.dumps({f"{r['regime']}:{r['key']}": round(r["ppl"], 3) for r in report["rows"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
