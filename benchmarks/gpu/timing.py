"""Speed on the device: prepend vs append vs none through the engine on a Llama-2-7B shape in bf16.

    python benchmarks/gpu/timing.py --out results/speed.json --device cuda
    python benchmarks/gpu/timing.py --out /tmp/speed.json --device cpu --tiny       # the CPU check

One sequence, through the engine (``FlashBack.generate``): ``benchmarks/speed.py``'s ``run_point`` at each
T of ``--T``, the headline first (4096, 2048, 1024; prompt half of T, stride 16, 128-token passages,
random weights of ``--shape``, SDPA attention): a short warm-up generation per pattern, then ``--repeats``
timed rounds, wall clock with ``torch.cuda.synchronize``. Beside each pattern's seconds: its FLOPs and
the calibrated time model's prediction, its peak GPU memory; per point the prepend / append ratio
measured, predicted and by the FLOP model (see ``benchmarks/speed.py`` for both models).

Before a point starts, the time model prices it with a decode step and a prefill token measured on the
spot; a point that would not end before ``--deadline`` is skipped and recorded with its estimate. The
results file is rewritten after every point.

Then, if time allows, a batch: ``batched.py`` replays the engine's schedule for ``--batch`` sequences at
once, each with its own passages, at ``--batch-T`` (model-level: the transformers backend decodes one
sequence at a time), and records seconds, tokens/s and peak memory per pattern.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from batched import estimate_seconds, replay
from common import benchmark, log, run_part

PATTERNS = ("prepend", "append", "none")
SAFETY = 1.3          # the time model slightly under-prices long recomputes (attention): margin for the guard


def add_arguments(parser) -> None:
    parser.add_argument("--shape", default=None, help="random-weight shape (default llama-7b; --tiny: tiny-random-llama)")
    parser.add_argument("--T", nargs="+", type=int, default=None, help="total lengths, in the order run (default 4096 2048 1024)")
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--doc-tokens", type=int, default=None, help="default 128 (--tiny: 16)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--batch", type=int, default=None, help="sequences at once in the batch replay (default 8; --tiny: 2)")
    parser.add_argument("--batch-T", type=int, default=None, help="T of the batch replay (default 1024; --tiny: 96)")


def fill_defaults(opts, device: torch.device) -> None:
    """The GPU run's shapes, or the tiny ones of the CPU check."""
    tiny = opts.tiny
    opts.shape = opts.shape or ("tiny-random-llama" if tiny else "llama-7b")
    opts.T = opts.T or ([128, 96] if tiny else [4096, 2048, 1024])
    opts.doc_tokens = opts.doc_tokens or (16 if tiny else 128)
    opts.batch = opts.batch or (2 if tiny else 8)
    opts.batch_T = opts.batch_T or (96 if tiny else 1024)
    opts.dtype = opts.dtype or ("bfloat16" if device.type == "cuda" else "float32")


def speed_args(opts, device: torch.device, total: int):
    """benchmarks/speed.py's arguments for one point (its own parser supplies every default)."""
    speed = benchmark("speed")
    model = ["--model", opts.shape] if opts.tiny else ["--random-init", opts.shape]
    return speed.parse_args(model + ["--T", str(total), "--init-length", str(total // 2), "--stride", str(opts.stride),
                                     "--doc-tokens", str(opts.doc_tokens), "--repeats", str(opts.repeats),
                                     "--device", str(device), "--dtype", opts.dtype, "--no-save"])


def point_estimate(args, total: int, constants: dict[str, float]) -> float:
    """Seconds ``run_point`` should take: warm-up and timed rounds of every pattern, priced by the time model."""
    speed = benchmark("speed")
    init, block, new = args.init_length, args.doc_tokens + 2, total - args.init_length
    warm = init + min(new, 2 * args.stride)
    seconds = sum(args.repeats * speed.predicted_seconds(speed.schedule(p, init, total, args.stride, block), constants)
                  + speed.predicted_seconds(speed.schedule(p, init, warm, args.stride, block), constants)
                  for p in PATTERNS)
    return SAFETY * seconds + 2.0


def model_facts(model, device: torch.device) -> dict[str, Any]:
    cfg = model.config
    return {"parameters": sum(p.numel() for p in model.parameters()), "dtype": str(next(model.parameters()).dtype),
            "attention": getattr(cfg, "_attn_implementation", None), "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size, "weights_gib": (round(torch.cuda.memory_allocated(device) / 2**30, 3)
                                                       if device.type == "cuda" else None)}


def main(report, opts, device: torch.device, deadline) -> str:
    speed = benchmark("speed")
    fill_defaults(opts, device)
    first = speed_args(opts, device, opts.T[0])
    longest = max(opts.T + [opts.batch_T]) + opts.doc_tokens + 2 + opts.stride
    started = time.perf_counter()
    model, tokenizer = speed.build_model(first, opts.shape, longest)
    report.data["model"] = dict(model_facts(model, device), shape=opts.shape, build_s=round(time.perf_counter() - started, 1))
    report.data["settings"] = {"T": opts.T, "stride": opts.stride, "doc_tokens": opts.doc_tokens, "repeats": opts.repeats,
                               "init": "T / 2", "batch": opts.batch, "batch_T": opts.batch_T}
    log(f"timing: {opts.shape} built in {report.data['model']['build_s']} s ({report.data['model']['parameters'] / 1e9:.2f}B)")
    ids = speed.plain_token_ids(tokenizer)
    speed.calibrate(model, speed.random_prompt(ids, 64, 0), 32, repeats=2)     # kernels, allocator: warm

    for total in opts.T:
        args = speed_args(opts, device, total)
        prompt = speed.random_prompt(ids, args.init_length, args.seed)
        constants = speed.calibrate(model, prompt, args.stride + args.doc_tokens + 2)
        estimate = point_estimate(args, total, constants)
        if not deadline.allows(estimate):
            report.skip(f"T={total}", f"time budget: estimated {estimate:.0f} s, {deadline.left():.0f} s left")
            log(f"timing: T={total} skipped (estimated {estimate:.0f} s, {deadline.left():.0f} s left)")
            continue
        log(f"timing: T={total} (estimated {estimate:.0f} s)")
        began = time.perf_counter()
        record = speed.run_point(args, opts.shape, model, tokenizer, total, lora=False)
        record.update(T=total, init_length=args.init_length, stride=args.stride, doc_tokens=args.doc_tokens,
                      estimated_s=round(estimate, 1), elapsed_s=round(time.perf_counter() - began, 1))
        report.add(record)
        log(f"timing: T={total} prepend {record['prepend_s']:.2f} s, append {record['append_s']:.2f} s, none "
            f"{record['none_s']:.2f} s: {record['speedup']:.2f}x (FLOP model {record['flops_speedup']:.2f}x)")

    batch = batch_point(opts, model, device, deadline, report, ids)
    if batch is not None:
        report.data["batch"] = batch
    return "partial" if report.data["skipped"] else "done"


def batch_point(opts, model, device: torch.device, deadline, report, ids: list[int]) -> dict[str, Any] | None:
    """The batch replay at ``--batch-T`` if the deadline allows all three patterns."""
    speed = benchmark("speed")
    total, batch, stride, block = opts.batch_T, opts.batch, opts.stride, opts.doc_tokens + 2
    init = total // 2
    constants = speed.calibrate(model, speed.random_prompt(ids, init, 0), stride + block)
    estimate = SAFETY * sum(estimate_seconds(p, batch, init, total, stride, block, constants) for p in PATTERNS) + 2.0
    if not deadline.allows(estimate):
        report.skip(f"batch {batch} at T={total}", f"time budget: estimated {estimate:.0f} s, {deadline.left():.0f} s left")
        return None
    log(f"timing: batch {batch} at T={total} (estimated {estimate:.0f} s)")
    out: dict[str, Any] = {"batch": batch, "T": total, "init_length": init, "stride": stride, "doc_tokens": opts.doc_tokens,
                           "estimated_s": round(estimate, 1), "how": "model-level replay of the engine's schedule"}
    replay(model, "append", batch, init, init + 2 * stride, stride, block, device)          # warm-up at this batch
    for p in PATTERNS:
        speed.reset_peak_memory(device)
        found = replay(model, p, batch, init, total, stride, block, device)
        out[f"{p}_s"] = found["seconds"]
        out[f"{p}_tokens_per_s"] = batch * (total - init) / found["seconds"]
        out[f"{p}_fed_tokens"] = found["fed_tokens"] * batch
        out[f"{p}_flops"] = batch * speed.flops(speed.schedule(p, init, total, stride, block), model)
        if device.type == "cuda":
            out[f"{p}_peak_gib"] = speed.peak_memory_gib(device)
        log(f"timing: batch {batch} {p} {found['seconds']:.2f} s")
    out["speedup"] = out["prepend_s"] / out["append_s"]
    out["flops_speedup"] = out["prepend_flops"] / out["append_flops"]
    out["append_over_none"] = out["append_s"] / out["none_s"]
    return out


if __name__ == "__main__":
    sys.exit(run_part("speed", main, description=__doc__.split("\n\n")[0], add_arguments=add_arguments))
