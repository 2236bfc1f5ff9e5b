"""Training throughput, packed windows vs one example per retrieval point, on SmolLM2-135M + LoRA.

    python benchmarks/packing.py                           # max positions 256, 512 and 1024 (about 10 min)
    python benchmarks/packing.py --max-positions 512 --repeats 1

For each context size, one document window (random tokens: throughput does not depend on the text) with a
retrieval point every ``stride`` tokens from ``min_prefix`` on, a passage of ``doc_tokens`` tokens per point
and an echo of ``echo_tokens``: the same LoRA + marker training step (forward, loss on the targets, backward)
is timed packed (``training/packing.py``: the window once, every block + target chunk after it; both ways
of running it: ``segments``, the default, and the single-sequence 4D ``mask``) and separately (``src = window[:i]`` per point, left-padded batches of ``--batch`` examples of similar
length). Reported: scored target tokens per second, wall clock, median of ``--repeats`` after a warm-up,
with the thread count and the load average (a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from flashback_rag.io_utils import atomic_write_json, atomic_write_text  # noqa: E402


def make_window(vocab: int, max_positions: int, stride: int, doc_tokens: int, echo: int, min_prefix: int, seed: int):
    from flashback_rag.training.prepare import PrepareConfig, window_points

    cfg = PrepareConfig(stride=stride, doc_tokens=doc_tokens, max_positions=max_positions, echo_tokens=echo,
                        min_prefix=min_prefix)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(100, vocab, (cfg.window_length,), generator=g).tolist()
    _, points = window_points(cfg.window_length, cfg)[0]
    passages = [[torch.randint(100, vocab, (doc_tokens,), generator=g).tolist()] for _ in points]
    return {"tokens": tokens, "points": points, "passages": passages, "stride": stride}


def step_seconds(fn, repeats: int) -> float:
    fn()                                         # warm-up: allocation, lazy init
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, markers, record, echo: int, batch: int, repeats: int, pad: int, with_mask: bool = True) -> dict:
    from flashback_rag.training.data import LeftPadCollator, batched, layout, target_nll
    from flashback_rag.training.packing import collate_packed, pack_record, packed_token_nll, unpack_record

    banned = markers.as_list()
    sequence = pack_record(record, "append", markers, echo=echo)
    batches_packed = {mode: collate_packed([sequence], pad, mode=mode)
                      for mode in (("segments", "mask") if with_mask else ("segments",))}

    def packed_step(mode):
        model.zero_grad(set_to_none=True)
        packed_token_nll(model, batches_packed[mode], banned).sum().backward()

    items = sorted(({"input_ids": layout(ex, "append", markers, echo=echo), "n_tgt": len(ex["tgt"])}
                    for ex in unpack_record(record)), key=lambda it: len(it["input_ids"]))
    batches = [LeftPadCollator(pad)(list(chunk)) for chunk in batched(items, batch)]

    def separate_step():
        model.zero_grad(set_to_none=True)
        for b in batches:
            target_nll(model, b, banned)[0].backward()

    targets = len(record["points"]) * record["stride"]
    packed_s = step_seconds(lambda: packed_step("segments"), repeats)
    # the single-mask form holds (heads x T x T) attention weights per layer for the backward pass:
    # past ~512 positions (T ~ 3000) that is tens of GB, so it is only timed on small windows
    mask_s = step_seconds(lambda: packed_step("mask"), repeats) if with_mask else None
    separate_s = step_seconds(separate_step, repeats)
    return {"points": len(record["points"]), "target_tokens": targets, "packed_tokens": len(sequence),
            "separate_tokens": sum(len(it["input_ids"]) for it in items),
            "packed_seconds": round(packed_s, 3), "mask_seconds": mask_s and round(mask_s, 3),
            "separate_seconds": round(separate_s, 3),
            "packed_targets_per_s": round(targets / packed_s, 1), "mask_targets_per_s": mask_s and round(targets / mask_s, 1),
            "separate_targets_per_s": round(targets / separate_s, 1),
            "speedup": round(separate_s / packed_s, 2), "mask_speedup": mask_s and round(separate_s / mask_s, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-positions", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--doc-tokens", type=int, default=80)
    p.add_argument("--echo-tokens", type=int, default=16)
    p.add_argument("--min-prefix", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="separate examples per forward")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mask-max-positions", type=int, default=512,
                   help="time the single 4D-mask form only up to this size (its attention memory grows as T^2)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    from flashback_rag.models import add_marker_tokens, load_model
    from flashback_rag.training.tuning import LoraSettings, lora_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device="cpu")
    markers = add_marker_tokens(model, tokenizer)
    model = lora_model(model, LoraSettings(dropout=0.0), markers.as_list())
    model.train()
    pad = tokenizer.pad_token_id or 0
    load_before = os.getloadavg()
    rows = []
    for positions in args.max_positions:
        record = make_window(len(tokenizer) - 2, positions, args.stride, args.doc_tokens, args.echo_tokens,
                             args.min_prefix, seed=positions)
        row = {"max_positions": positions, **measure(model, markers, record, args.echo_tokens, args.batch,
                                                     args.repeats, pad, positions <= args.mask_max_positions)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    report = {"benchmark": "packed vs separate training throughput (LoRA + markers, append + echo)",
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/packing.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "model": args.model, "settings": {k: getattr(args, k) for k in ("stride", "doc_tokens", "echo_tokens",
                                                                            "min_prefix", "batch", "repeats")},
              "threads": args.threads, "load_average": {"before": load_before, "after": os.getloadavg()},
              "rows": rows}
    out = Path(args.out)
    atomic_write_json(out / "packing-smollm2-135m.json", report)
    lines = [f"# Packed vs separate training throughput: {args.model} + LoRA r=16 + markers", "",
             f"Measured {report['date']} on CPU, {args.threads} torch threads, load average "
             f"{load_before[0]:.1f} before / {report['load_average']['after'][0]:.1f} after. "
             f"Command: `{report['command']}`", "",
             f"One window per row: a retrieval point every {args.stride} tokens from {args.min_prefix} on, "
             f"{args.doc_tokens}-token passages, echo {args.echo_tokens}; one training step (forward + loss + "
             f"backward), median of {args.repeats} after a warm-up. Separate: batches of {args.batch} examples "
             "of similar length.", "",
             "| max positions | points | target tokens | tokens fed packed / separate | packed (segments) "
             "targets/s | packed (one 4D mask) targets/s | separate targets/s | speed-up (segments) | "
             "speed-up (mask) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['max_positions']} | {r['points']} | {r['target_tokens']} | {r['packed_tokens']} / "
                     f"{r['separate_tokens']} | {r['packed_targets_per_s']} | {r['mask_targets_per_s'] or '-'} | "
                     f"{r['separate_targets_per_s']} | {r['speedup']}x | "
                     f"{str(r['mask_speedup']) + 'x' if r['mask_speedup'] else '- (memory)'} |")
    atomic_write_text(out / "packing-smollm2-135m.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
