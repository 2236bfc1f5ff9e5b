"""Training on the device: a few packed FlashBack steps of a 1B-shaped model in bf16, through the trainer.

    python benchmarks/gpu/train_steps.py --out results/train.json --device cuda
    python benchmarks/gpu/train_steps.py --out /tmp/train.json --device cpu --tiny     # the CPU check

The path a user takes, on the device: a model folder (``--shape``, TinyLlama-1.1B's by default, with random
weights in bf16 and the byte-level tokenizer of the tiny test models), a BM25 index over the Python
language reference (``pydoc`` topics: there on every Python), ``flashback prepare``'s windows, then
``flashback train``'s trainer (``training.trainer.train``: LoRA on the attention projections and the two
marker rows, packed windows with their 4D masks, the shipped layout: append, markers, echo 16, block
positions before) for ``--steps`` steps.

Recorded: seconds per step (CUDA-synchronized; the first, with its warm-up, apart), packed tokens per
second (every token a step feeds: the windows and their segments), target tokens per second, peak GPU
memory, the losses (finite), and how far the marker rows moved from where they started (their gradients
reached them). A step that would pass ``--deadline`` is not started: the trainer stops and saves.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import benchmark, log, run_part


def add_arguments(parser) -> None:
    parser.add_argument("--shape", default=None, help="random-weight shape (default tinyllama-1.1b; --tiny: tiny-random-llama)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 10; --tiny: 2)")
    parser.add_argument("--batch", type=int, default=None, help="packed windows per step (default 2; --tiny: 1)")
    parser.add_argument("--max-positions", type=int, default=None, help="prepared window + block (default 1024; --tiny: 256)")
    parser.add_argument("--doc-tokens", type=int, default=None, help="default 128 (--tiny: 32)")
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--echo-tokens", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="weights' dtype (default bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the model, data and adapter (default: a temp dir)")


def fill_defaults(opts, device: torch.device) -> None:
    tiny = opts.tiny
    opts.shape = opts.shape or ("tiny-random-llama" if tiny else "tinyllama-1.1b")
    opts.steps = opts.steps or (2 if tiny else 10)
    opts.batch = opts.batch or (1 if tiny else 2)
    opts.max_positions = opts.max_positions or (256 if tiny else 1024)
    opts.doc_tokens = opts.doc_tokens or (32 if tiny else 128)
    opts.dtype = opts.dtype or ("bfloat16" if device.type == "cuda" else "float32")


def model_folder(opts, device: torch.device, folder: Path) -> dict[str, Any]:
    """Write the model to train (random weights of ``--shape``) as a Hugging Face folder."""
    from flashback_rag.models import load_model
    from flashback_rag.shapes import random_model

    if opts.shape.startswith("tiny-random-"):
        model, tokenizer = load_model(opts.shape, device=device, dtype=opts.dtype)
    else:
        model, tokenizer = random_model(opts.shape, device=device, dtype=opts.dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    facts = {"shape": opts.shape, "parameters": sum(p.numel() for p in model.parameters()), "dtype": opts.dtype}
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return facts


def prepared_data(opts, model_dir: Path, out: Path) -> dict[str, Any]:
    """``flashback prepare`` over the pydoc topics with a BM25 index of them: enough windows for every step."""
    from transformers import AutoTokenizer

    from flashback_rag.corpus import chunk_documents
    from flashback_rag.retrievers import BM25Retriever
    from flashback_rag.stdlib_corpus import pydoc_topic_documents
    from flashback_rag.training.prepare import PrepareConfig, prepare

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    documents = pydoc_topic_documents()
    retriever = BM25Retriever.from_chunks(chunk_documents(documents, tokenizer, 2 * opts.doc_tokens))
    cfg = PrepareConfig(stride=opts.stride, query_tokens=32, doc_tokens=opts.doc_tokens, top_k=1,
                        max_positions=opts.max_positions, echo_tokens=opts.echo_tokens)
    per_window = (cfg.window_length - cfg.window_prefix - cfg.stride) // cfg.stride + 1
    record = prepare({"train": documents}, retriever, tokenizer, out, cfg,
                     max_examples={"train": opts.steps * opts.batch * per_window}, show_progress=False)
    return {"documents": len(documents), "counts": record["counts"], "window_length": cfg.window_length}


def packed_lengths(opts, data: Path, model_dir: Path) -> tuple[list[int], list[int]]:
    """(packed tokens, target tokens) of every prepared window, as the trainer will pack them."""
    from transformers import AutoTokenizer

    from flashback_rag.models import MarkerIds
    from flashback_rag.training.packing import pack_record
    from flashback_rag.training.prepare import read_windows

    vocab = len(AutoTokenizer.from_pretrained(model_dir))
    marks = MarkerIds(vocab, vocab + 1)          # where the trainer adds them: only their count matters here
    packed = [pack_record(r, "append", marks, echo=opts.echo_tokens, block_positions="before")
              for r in read_windows(data / "train")]
    return [len(p) for p in packed], [len(p.targets) for p in packed]


def step_timer(device: torch.device, deadline, margin: float):
    """A TrainerCallback: each optimizer step's seconds (synchronized), and a stop before the deadline."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._began = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            benchmark("speed").synchronize(device)
            self._began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            benchmark("speed").synchronize(device)
            self.seconds.append(time.perf_counter() - self._began)
            typical = statistics.median(self.seconds[1:] or self.seconds)
            if not deadline.allows(typical + margin):
                control.should_training_stop = True
                log(f"train: stopping after {len(self.seconds)} steps (deadline)")

    return StepTimer()


def marker_rows_moved(model) -> float | None:
    """The largest change of a marker row (PEFT's trainable-token deltas against the rows they started from)."""
    moved = None
    with torch.no_grad():
        for module in model.modules():
            deltas = getattr(module, "trainable_tokens_delta", None)
            if deltas is not None and "default" in deltas:
                start = module.trainable_tokens_original["default"]
                change = float((deltas["default"].float() - start.float().to(deltas["default"].device)).abs().max())
                moved = change if moved is None else max(moved, change)
    return moved


def main(report, opts, device: torch.device, deadline) -> str:
    from flashback_rag.training.trainer import TrainConfig, train

    speed = benchmark("speed")
    fill_defaults(opts, device)
    report.data["settings"] = {k: getattr(opts, k) for k in ("shape", "steps", "batch", "max_positions", "doc_tokens",
                                                             "stride", "echo_tokens", "dtype")}
    report.data["settings"].update(pattern="append", markers=True, block_positions="before", tune="lora")
    scratch = opts.scratch or Path(tempfile.mkdtemp(prefix="flashback-gpu-train-"))
    began = time.perf_counter()
    report.data["model"] = model_folder(opts, device, scratch / "model")
    report.data["data"] = prepared_data(opts, scratch / "model", scratch / "data")
    lengths, targets = packed_lengths(opts, scratch / "data", scratch / "model")
    report.data["setup_s"] = round(time.perf_counter() - began, 1)
    log(f"train: {opts.shape} folder and {len(lengths)} packed windows ready in {report.data['setup_s']} s")

    timer = step_timer(device, deadline, margin=15.0)        # the adapter save and the summary after it
    cfg = TrainConfig(model=str(scratch / "model"), data=str(scratch / "data"), out=str(scratch / "adapter"),
                      pattern="append", markers=True, tune="lora", echo_tokens=opts.echo_tokens,
                      block_positions="before", max_steps=opts.steps, batch_size=opts.batch, warmup_ratio=0.0,
                      logging_steps=1, dtype=opts.dtype, precision="bf16" if opts.dtype == "bfloat16" and
                      device.type == "cuda" else "fp32", device=device.type, report_to="none", seed=0)
    speed.reset_peak_memory(device)
    began = time.perf_counter()
    model, _, metrics = train(cfg, show_progress=False, callbacks=[timer])
    seconds = timer.seconds
    steady = seconds[1:] or seconds
    per_step = opts.batch * statistics.mean(lengths)
    target_per_step = opts.batch * statistics.mean(targets)
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    moved = marker_rows_moved(model)
    report.add({
        "steps": len(seconds), "train_s": round(time.perf_counter() - began, 2), "step_s": seconds,
        "first_step_s": seconds[0] if seconds else None, "steady_step_s": statistics.median(steady) if steady else None,
        "packed_tokens_per_step": per_step, "target_tokens_per_step": target_per_step,
        "packed_tokens_per_s": per_step / statistics.median(steady) if steady else None,
        "target_tokens_per_s": target_per_step / statistics.median(steady) if steady else None,
        "peak_gib": speed.peak_memory_gib(device), "losses": losses,
        "losses_finite": bool(losses) and all(math.isfinite(x) for x in losses),
        "marker_rows_moved": moved, "marker_rows_trained": moved is not None and moved > 0,
        "adapter_written": (scratch / "adapter" / "adapter_model.safetensors").is_file(),
    })
    item = report.data["items"][-1]
    log(f"train: {item['steps']} steps, {item['steady_step_s']:.3f} s a step, "
        f"{item['packed_tokens_per_s']:.0f} packed tokens/s, losses {[round(x, 3) for x in losses]}")
    report.data["all_hold"] = item["losses_finite"] and item["marker_rows_trained"] and item["adapter_written"]
    return "done" if item["steps"] == opts.steps else "partial"


if __name__ == "__main__":
    sys.exit(run_part("train", main, description=__doc__.split("\n\n")[0], add_arguments=add_arguments))
