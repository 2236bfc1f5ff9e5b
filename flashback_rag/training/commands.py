"""The training sub-commands: ``flashback prepare``, ``train``, ``eval ppl`` and ``export``.

    $ flashback prepare --model smollm2-135m --input docs/ --index my-index --out prepared/
    $ flashback train --model smollm2-135m --data prepared/ --out adapters/append-markers
    $ flashback eval ppl --model smollm2-135m --adapter adapters/append-markers --data prepared/
    $ flashback eval ppl --model smollm2-135m --text notes.txt --index my-index --pattern none --output none.json
    $ flashback eval ppl --model smollm2-135m-flashback --text notes.txt --index my-index --compare none.json
    $ flashback export --model smollm2-135m --adapter adapters/append-markers --merge --out merged/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import BLOCK_POSITIONS, FlashBackConfig
from ..errors import FlashBackError
from ..io_utils import atomic_write_text, dumps_json
from .output import drop_unused_prepare_record, staged_training_output, taken_back_on_error


def _cmd_prepare(args: argparse.Namespace) -> int:
    from ..indexing import load_tokenizer
    from ..retrievers import load_index
    from .prepare import PrepareConfig, prepare, split_documents

    cfg = PrepareConfig(stride=args.stride, query_tokens=args.query_tokens, doc_tokens=args.doc_tokens,
                        top_k=args.top_k, max_positions=args.max_positions, construction=args.construction,
                        min_context=args.min_context, every=args.every, seed=args.seed,
                        echo_tokens=args.echo_tokens, min_prefix=args.min_prefix)
    retriever = load_index(args.index, forbidden_titles=args.forbidden_titles)
    tokenizer = load_tokenizer(args.model)
    if args.validation_input:
        sources = {"train": args.input, "validation": args.validation_input}
    elif args.validation_fraction > 0:
        from ..corpus import read_documents

        train, val = split_documents(list(read_documents(args.input)), args.validation_fraction, args.seed)
        sources = {"train": train, "validation": val}
    else:
        sources = {"train": args.input}
    record = {"model": args.model, "index": str(args.index), "input": str(args.input),
              "validation_input": args.validation_input, "validation_fraction": args.validation_fraction,
              "forbidden_titles": args.forbidden_titles}
    drop_unused_prepare_record(args.out)      # a failed first run must not refuse the corrected one
    with taken_back_on_error(args.out):       # nor one that failed after writing some shards
        done = prepare(sources, retriever, tokenizer, args.out, cfg, record=record,
                       max_examples={"train": args.max_examples, "validation": args.max_validation_examples},
                       show_progress=not args.quiet)
    print(json.dumps({"out": str(args.out), "counts": done["counts"]}))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .trainer import TrainConfig, train
    from .tuning import LoraSettings

    cfg = TrainConfig(
        model=args.model, data=args.data if len(args.data) > 1 else args.data[0], out=args.out, pattern=args.pattern, markers=args.markers,
        tune=args.tune, lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                          targets=args.lora_targets),
        top_k=args.top_k, echo_tokens=args.echo_tokens, block_positions=args.block_positions, pack=args.pack,
        keep_unchanged=args.keep_unchanged, prefix_loss_weight=args.prefix_loss_weight, copy_unlikelihood=args.copy_unlikelihood,
        copy_min_match=args.copy_min_match, learning_rate=args.learning_rate,
        marker_lr=args.marker_lr, marker_init=args.marker_init, weight_decay=args.weight_decay,
        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, grad_accum=args.grad_accum,
        epochs=args.epochs, max_steps=args.max_steps, warmup_ratio=args.warmup_ratio, eval_steps=args.eval_steps,
        save_steps=args.save_steps, logging_steps=args.logging_steps, max_train_examples=args.max_train_examples,
        max_eval_examples=args.max_eval_examples, precision=args.precision, dtype=args.dtype, device=args.device,
        seed=args.seed, resume=args.resume, deepspeed=args.deepspeed,
        gradient_checkpointing=args.gradient_checkpointing, report_to=args.report_to)
    with staged_training_output(cfg.out, cfg.resume) as staging:   # old adapter or new one, never half
        cfg.out = str(staging)
        _, _, metrics = train(cfg, show_progress=not args.quiet)
    summary = {k: metrics.get(k) for k in ("train_loss", "eval_loss", "eval_ppl", "train_runtime", "train_examples")}
    print(json.dumps({"out": args.out, **summary}))
    return 0


def _cmd_eval_ppl(args: argparse.Namespace) -> int:
    from ..models import load_model, relative_positions
    from ..retrievers import load_index
    from ..adapters import adapter_config
    from .data import read_examples
    from .evaluate import compare_text_results, prepared_perplexity, text_perplexity, windows_perplexity
    from .prepare import read_windows as read_prepared_windows

    if (args.data is None) == (args.text is None):
        raise FlashBackError("give exactly one of --data DIR (prepared examples) or --text FILE (raw text)")
    other = _read_comparison(args.compare) if args.compare else None
    if other is not None and args.text is None:
        raise FlashBackError("--compare works with --text (the paired ratio of two runs on the same text)")
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype, adapter=args.adapter)
    # The model's own settings (an adapter's, or a FlashBack model's) unless a flag overrides them.
    trained = getattr(model, "flashback_config", None)
    if trained is None and args.adapter:
        trained = adapter_config(args.adapter)
    pattern = args.pattern or (trained.pattern if trained else "append")
    markers = args.markers if args.markers is not None else (trained.markers if trained else True)
    echo = args.echo_tokens if args.echo_tokens is not None else (trained.echo_tokens if trained else 0)
    block_positions = args.block_positions or (trained.block_positions if trained else "after")
    keep = args.keep_unchanged if args.keep_unchanged is not None else (trained.keep_unchanged if trained else True)
    if pattern == "append" and block_positions == "before" and not relative_positions(model.config.model_type):
        raise FlashBackError(f"--block-positions before gives the block positions below 0, which a "
                             f"{model.config.model_type} model (learned absolute positions) cannot read")
    if args.data:
        from .validation import check_positions, read_prepared_record

        check_positions(read_prepared_record(args.data)["config"].get("max_positions"), model,
                        f"the data in {args.data} (prepare --max-positions)",
                        "prepare it again with --max-positions {limit} or less")
        split = Path(args.data) / args.split
        if args.multi == "concat" and args.pack is not False and (split / "windows").is_dir():
            records = read_prepared_windows(split, args.max_examples)
            result = windows_perplexity(model, tokenizer, records, pattern, markers, args.top_k, echo,
                                        pack=args.pack is not False, batch_size=max(1, args.batch_size // 2),
                                        show_progress=not args.quiet, block_positions=block_positions,
                                        keep_unchanged=keep)
        else:
            examples = read_examples(split, args.max_examples)
            result = prepared_perplexity(model, tokenizer, examples, pattern, markers, args.top_k, args.multi,
                                         args.batch_size, show_progress=not args.quiet, echo=echo,
                                         block_positions=block_positions)
        result.pop("example_nll", None)
        result["data"] = str(split)
    else:
        if not Path(args.text).is_file():
            raise FlashBackError(f"no such text file: {args.text}")
        retriever = load_index(args.index, forbidden_titles=args.forbidden_titles) if args.index else None
        layout = trained or FlashBackConfig()
        stride, query_tokens, doc_tokens, top_k = (
            given if given is not None else getattr(layout, name)
            for given, name in ((args.stride, "stride"), (args.query_tokens, "query_tokens"),
                                (args.doc_tokens, "doc_tokens"), (args.top_k, "top_k")))
        result = text_perplexity(model, tokenizer, Path(args.text).read_text(encoding="utf-8"), retriever,
                                 pattern, markers, stride, query_tokens, doc_tokens, top_k,
                                 args.max_positions, args.max_tokens, args.batch_size,
                                 show_progress=not args.quiet, echo=echo, block_positions=block_positions,
                                 keep_unchanged=keep)
        result["text"] = str(args.text)
        if other is not None:
            result["compare"] = {"file": str(args.compare), **compare_text_results(result, other)}
    result.update(model=args.model, adapter=args.adapter)
    if args.output:
        atomic_write_text(Path(args.output), dumps_json(result, indent=2) + "\n")
    result.pop("chunk_nll", None)              # hundreds of numbers: in the --output file only
    print(dumps_json(result, indent=2))        # strict JSON: a NaN or inf figure is written as null
    return 0


def _read_comparison(path: str) -> dict:
    """A previous ``eval ppl --text --output`` result, checked before any model is loaded."""
    file = Path(path)
    if not file.is_file():
        raise FlashBackError(f"no such result file to compare with: {path}")
    try:
        result = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FlashBackError(f"{path} is not a JSON result of `flashback eval ppl`: {exc}") from None
    if not isinstance(result, dict):
        raise FlashBackError(f"{path} is not a JSON result of `flashback eval ppl` (not an object)")
    return result


def _cmd_export(args: argparse.Namespace) -> int:
    from ..adapters import export_merged

    out = export_merged(args.model, args.adapter, args.out, device=args.device, markers=args.markers)
    print(f"model written to {out} (serve it with: vllm serve {out} --enable-prefix-caching "
          "--enable-prompt-tokens-details)")
    return 0


def _cmd_rescale(args: argparse.Namespace) -> int:
    from ..adapter_scale import rescale_adapter

    out = rescale_adapter(args.adapter, args.factor, args.out)
    print(f"adapter written to {out} (its LoRA update x {args.factor:g})")
    return 0


def add_commands(subparsers) -> None:
    from ..models import DEFAULT_MARKER_INIT, MARKER_INITS
    from .trainer import DEFAULT_MARKER_LR
    from .unlikelihood import DEFAULT_MIN_MATCH

    p = subparsers.add_parser("prepare", help="corpus + index -> training / validation examples")
    p.add_argument("--model", required=True, help="model (alias/folder/id) whose tokenizer is used")
    p.add_argument("--input", required=True, help="training text: file, folder, or hf:NAME[:CONFIG[:SPLIT]]")
    p.add_argument("--validation-input", help="validation text (else --validation-fraction of the documents)")
    p.add_argument("--validation-fraction", type=float, default=0.05)
    p.add_argument("--index", required=True, help="index folder to retrieve from")
    p.add_argument("--forbidden-titles", help="file with one title a line never to retrieve")
    p.add_argument("--out", required=True, help="output folder (re-running resumes)")
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--query-tokens", type=int, default=32)
    p.add_argument("--doc-tokens", type=int, default=128)
    p.add_argument("--top-k", type=int, default=1, help="passages per example, concatenated")
    p.add_argument("--max-positions", type=int, default=512)
    p.add_argument("--construction", choices=("random", "default"), default="random",
                   help="random: target at a random position (seed's default); default: fill max positions")
    p.add_argument("--min-context", type=int, default=None, help="first retrieval point (default max-positions - stride)")
    p.add_argument("--every", type=int, default=1, help="keep one retrieval point in N")
    p.add_argument("--echo-tokens", type=int, default=0,
                   help="room kept for an echo of up to N tokens (train --echo-tokens)")
    p.add_argument("--min-prefix", type=int, default=None,
                   help="windows (packed training): tokens before a window's first retrieval point "
                        "(default a quarter of the window)")
    p.add_argument("--max-examples", type=int, default=None, help="cap on training examples")
    p.add_argument("--max-validation-examples", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_prepare)

    t = subparsers.add_parser("train", help="fine-tune LoRA + marker rows (or the full model)")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True, nargs="+",
                   help="folder(s) written by `flashback prepare`; several are mixed (the first's validation "
                        "split evaluates)")
    t.add_argument("--out", required=True, help="adapter folder to write")
    t.add_argument("--pattern", choices=("append", "prepend", "none"), default="append")
    t.add_argument("--markers", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--tune", choices=("lora", "full"), default="lora")
    t.add_argument("--lora-r", type=int, default=16)
    t.add_argument("--lora-alpha", type=int, default=32)
    t.add_argument("--lora-dropout", type=float, default=0.05)
    t.add_argument("--lora-targets", nargs="+", default=None, help="module names (default: per model_type)")
    t.add_argument("--top-k", type=int, default=None)
    t.add_argument("--echo-tokens", type=int, default=0,
                   help="append: repeat the last N prefix tokens after the passage block")
    t.add_argument("--block-positions", choices=BLOCK_POSITIONS, default="after",
                   help="append: the position ids of the passage block: after the prefix (the paper's), or "
                        "before the first token, as if prepended, the text keeping its own positions")
    t.add_argument("--keep-unchanged", action=argparse.BooleanOptionalAction, default=True,
                   help="packed append: consecutive retrieval points with the same passages share one block "
                        "and a longer chunk, as decoding keeps an unchanged block (default); "
                        "--no-keep-unchanged: one block per point, the paper's layout")
    t.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True,
                   help="packed windows: each window read once with all its retrieval points (default); "
                        "--no-pack: one example per point")
    t.add_argument("--prefix-loss-weight", type=float, default=0.0,
                   help="packed append / none: add this times the mean loss of each window's own tokens (the "
                        "prefix, read without passages, as decoding computes its cache); default 0, the paper's "
                        "loss on the targets after each passage only")
    t.add_argument("--copy-unlikelihood", type=float, default=0.0,
                   help="packed append: add this times the copy unlikelihood, -log(1 - p) of the token that would "
                        "continue a passage the text matches where the text goes another way (less quoting "
                        "in free generation); default 0")
    t.add_argument("--copy-min-match", type=int, default=DEFAULT_MIN_MATCH,
                   help="tokens the text must match a passage before its next token is a copy candidate "
                        "(default %(default)s)")
    t.add_argument("--learning-rate", type=float, default=2e-4)
    t.add_argument("--marker-lr", type=float, default=DEFAULT_MARKER_LR,
                   help="learning rate of the two marker rows (default %(default)s)")
    t.add_argument("--marker-init", choices=MARKER_INITS, default=DEFAULT_MARKER_INIT,
                   help="how the marker rows start (default %(default)s)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--eval-batch-size", type=int, default=None)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--max-steps", type=int, default=-1)
    t.add_argument("--warmup-ratio", type=float, default=0.1)
    t.add_argument("--eval-steps", type=int, default=0)
    t.add_argument("--save-steps", type=int, default=0)
    t.add_argument("--logging-steps", type=int, default=5)
    t.add_argument("--max-train-examples", type=int, default=None)
    t.add_argument("--max-eval-examples", type=int, default=None)
    t.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    t.add_argument("--dtype", default=None, help="dtype to load the base weights in (default float32)")
    t.add_argument("--device", default=None, help="cpu to force CPU (default: GPU when present)")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT")
    t.add_argument("--deepspeed", default=None, help="DeepSpeed config JSON (e.g. training/ds_zero2.json)")
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument("--report-to", default="auto", help="auto (tensorboard if installed), none, wandb ...")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    ev = subparsers.add_parser("eval", help="evaluate models and adapters")
    esub = ev.add_subparsers(dest="eval_command", required=True)   # same parser class as `ev`
    ppl = esub.add_parser("ppl", help="perplexity on prepared data or raw text (JSON)")
    ppl.add_argument("--model", required=True)
    ppl.add_argument("--adapter", default=None, help="adapter folder from `flashback train`")
    ppl.add_argument("--data", default=None, help="prepared folder (uses its --split)")
    ppl.add_argument("--split", default="validation")
    ppl.add_argument("--text", default=None, help="raw text file: sliding-window perplexity")
    ppl.add_argument("--index", default=None, help="index folder for --text")
    ppl.add_argument("--forbidden-titles", default=None)
    ppl.add_argument("--pattern", choices=("append", "prepend", "none"), default=None,
                     help="default: the adapter's, else append")
    ppl.add_argument("--markers", action=argparse.BooleanOptionalAction, default=None)
    ppl.add_argument("--top-k", type=int, default=None, help="passages used (default: all prepared)")
    ppl.add_argument("--echo-tokens", type=int, default=None, help="append echo (default: the adapter's, else 0)")
    ppl.add_argument("--block-positions", choices=BLOCK_POSITIONS, default=None,
                     help="append: where the block sits in position space (default: the adapter's, else after)")
    ppl.add_argument("--keep-unchanged", action=argparse.BooleanOptionalAction, default=None,
                     help="append: a retrieval point that finds the passages in place keeps their block (default: "
                          "the model's, else on); --no-keep-unchanged re-inserts it at every point")
    ppl.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                     help="--data: score prepared windows, packed (default when present); --no-pack: per-point examples")
    ppl.add_argument("--multi", choices=("concat", "average", "average-probs"), default="concat",
                     help="several passages: one block, or one context each averaged (the seed's scoring)")
    ppl.add_argument("--stride", type=int, default=None, help="--text: default the model's own, else 16")
    ppl.add_argument("--query-tokens", type=int, default=None, help="--text: default the model's own, else 32")
    ppl.add_argument("--doc-tokens", type=int, default=None, help="--text: default the model's own, else 128")
    ppl.add_argument("--max-positions", type=int, default=None)
    ppl.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of --text")
    ppl.add_argument("--max-examples", type=int, default=None)
    ppl.add_argument("--batch-size", type=int, default=8)
    ppl.add_argument("--device", default=None)
    ppl.add_argument("--dtype", default=None)
    ppl.add_argument("--output", default=None, help="also write the JSON to this file (with --text: plus the "
                     "per-chunk losses --compare reads)")
    ppl.add_argument("--compare", default=None, metavar="FILE",
                     help="--text: the --output of another run on the same text; adds the paired perplexity ratio")
    ppl.add_argument("--quiet", action="store_true")
    ppl.set_defaults(func=_cmd_eval_ppl)

    ex = subparsers.add_parser("export", help="write a plain model folder (LoRA and marker rows merged) that "
                                              "vLLM or any HF loader serves as is")
    ex.add_argument("--model", required=True,
                    help="a shipped FlashBack model (smollm2-135m-flashback), or the adapter's base model")
    ex.add_argument("--adapter", default=None, help="a `flashback train` folder to merge in")
    ex.add_argument("--out", required=True)
    ex.add_argument("--merge", action="store_true", help="accepted for compatibility: exports always merge")
    ex.add_argument("--markers", action=argparse.BooleanOptionalAction, default=None,
                    help="add the marker tokens (default: when the model's settings use them)")
    ex.add_argument("--device", default="cpu")
    ex.set_defaults(func=_cmd_export)

    rs = subparsers.add_parser("rescale", help="write a copy of a LoRA adapter with its update times a factor "
                                               "(0 = the base model, 1 = as trained)")
    rs.add_argument("--adapter", required=True, help="a `flashback train` LoRA adapter folder")
    rs.add_argument("--factor", type=float, required=True, help="the multiplier of the LoRA update (> 0)")
    rs.add_argument("--out", required=True, help="the rescaled adapter's folder")
    rs.set_defaults(func=_cmd_rescale)
