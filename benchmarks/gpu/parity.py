"""Parity on the device: cached decoding gives what recomputing the whole context gives, on CUDA.

    python benchmarks/gpu/parity.py --out results/parity.json --device cuda
    python benchmarks/gpu/parity.py --out /tmp/parity.json --device cpu --tiny      # the CPU check

For each case of ``CASES`` (append with markers, + echo, + block positions before; prepend; none) on the
tiny random Llama and Qwen2 models, the engine generates greedily twice, cached and with
``use_cache=False`` (the reference: the whole logical context recomputed at every token), with a retriever
that returns a new random passage at every retrieval point (so every retrieval crops and re-feeds).

* float32: the same tokens and the same retrievals, every step's logits within ``FP32_TOL``.
* bfloat16: :func:`compare` walks the steps while both texts are still the same: logits within
  ``BF16_REL`` x the largest |logit| (a few bf16 steps at that size; measured on the CPU: 1 to 1.5), and
  the same token wherever the reference's top-2 margin is clear (more than twice that tolerance). A
  closer call may go either way in bf16; the two texts then part, their next retrievals differ, and the
  comparison stops there (recorded as ``diverged_at`` with the margin).

Also recorded, on CUDA: host syncs per generated token of a cached run without ``output_scores``
(``torch.cuda.set_sync_debug_mode`` counts every operation that makes the host wait; the decoding loop
should need one a token, the read of the chosen id, plus one when the generation ends), a seeded sampled generation repeated (the sampler's generator on the GPU), and packed
training == one example per retrieval point (loss and gradients of LoRA and marker rows, both packing
modes, both block positions), the 4D mask and the marker rows on the device.
"""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any

import torch

from common import benchmark, log, run_part

ARCHS = ("llama", "qwen2")
DTYPES = ("float32", "bfloat16")
CASES: dict[str, dict[str, Any]] = {
    "append+markers": dict(pattern="append", markers=True),
    "append+markers+echo": dict(pattern="append", markers=True, echo_tokens=4),
    "append+markers+echo+before": dict(pattern="append", markers=True, echo_tokens=4, block_positions="before"),
    "prepend": dict(pattern="prepend", markers=True),
    "none": dict(pattern="none"),
}
FP32_TOL = 1e-3      # absolute, on logits of size ~7 (CPU: ~1e-5)
BF16_REL = 0.03      # x the largest |logit|: ~6 bf16 steps at the top of the range (CPU: 1 to 1.5)


def compare(cached, reference, tolerance: float, clear_margin: float) -> dict[str, Any]:
    """Step by step while the two texts agree: the largest logit difference, and where (and at what
    top-2 margin of the reference) they first chose differently. ``holds``: every difference within
    ``tolerance``, no parting at a margin above ``clear_margin``, and the same retrievals until then."""
    steps = min(len(cached.token_ids), len(reference.token_ids))
    worst, same_masks, diverged = 0.0, True, None
    for i in range(steps):
        a, b = cached.scores[i], reference.scores[i]
        finite = torch.isfinite(b)
        same_masks &= torch.equal(finite, torch.isfinite(a))
        worst = max(worst, float((a[finite] - b[finite]).abs().max()))
        if cached.token_ids[i] != reference.token_ids[i]:
            top = torch.topk(b[finite].float(), 2).values
            diverged = {"step": i, "margin": float(top[0] - top[1])}
            break
    compared = diverged["step"] + 1 if diverged else steps
    scale = max(float(s[torch.isfinite(s)].abs().max()) for s in reference.scores[:compared])
    # retrievals happen before the step they serve: those up to the parting step must agree
    retrievals = [(r.step, r.passage_ids) for r in cached.retrievals if r.step < compared]
    same_retrievals = retrievals == [(r.step, r.passage_ids) for r in reference.retrievals if r.step < compared]
    holds = (same_masks and same_retrievals and worst <= tolerance
             and (diverged is None or diverged["margin"] <= clear_margin))
    return {"holds": holds, "tokens_equal": cached.token_ids == reference.token_ids, "steps": steps,
            "compared_steps": compared, "max_logit_diff": worst, "logit_scale": scale, "tolerance": tolerance,
            "clear_margin": clear_margin, "diverged": diverged, "same_retrievals": same_retrievals,
            "same_masks": same_masks}


@contextmanager
def counting_syncs(device: torch.device):
    """Count the operations that make the host wait for the GPU inside the block (CUDA only)."""
    box = {"syncs": None}
    if device.type != "cuda":
        yield box
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield box
        finally:
            torch.cuda.set_sync_debug_mode("default")
    box["syncs"] = sum("synchronizing" in str(w.message) for w in caught)


def generation_pair(model, tokenizer, fields: dict[str, Any], prompt: list[int], new_tokens: int, doc: int,
                    device: torch.device):
    """(cached, reference) greedy results of one case, each with a fresh retriever of the same series."""
    from flashback_rag import FlashBack, FlashBackConfig

    speed = benchmark("speed")
    ids = speed.plain_token_ids(tokenizer)
    config = FlashBackConfig(stride=8, query_tokens=8, doc_tokens=doc, top_k=1, **fields)

    def engine():
        return FlashBack(model, tokenizer, speed.RandomPassages(tokenizer, doc, ids, seed=1) if config.retrieves
                         else None, config)

    runs = [engine().generate(prompt, max_new_tokens=new_tokens, ignore_eos=True, output_scores=True,
                              use_cache=use_cache) for use_cache in (True, False)]
    syncs = None
    if device.type == "cuda":       # once more, cached, without output_scores (each score is copied to the host)
        fb = engine()
        with counting_syncs(device) as box:
            fb.generate(prompt, max_new_tokens=new_tokens, ignore_eos=True)
        syncs = box["syncs"]
    return runs[0], runs[1], syncs


def sampled_repeat(model, tokenizer, prompt: list[int], new_tokens: int, doc: int) -> dict[str, Any]:
    """A seeded sampled generation twice: the same tokens (the generator lives on the logits' device)."""
    from flashback_rag import FlashBack, FlashBackConfig

    speed = benchmark("speed")
    ids = speed.plain_token_ids(tokenizer)
    outs = []
    for _ in range(2):
        fb = FlashBack(model, tokenizer, speed.RandomPassages(tokenizer, doc, ids, seed=2),
                       FlashBackConfig(pattern="append", stride=8, query_tokens=8, doc_tokens=doc))
        outs.append(fb.generate(prompt, max_new_tokens=new_tokens, ignore_eos=True, temperature=0.8, top_p=0.9,
                                seed=7, repetition_penalty=1.2).token_ids)
    return {"case": "sampled (T 0.8, top-p 0.9, penalty 1.2, seed 7) twice", "holds": outs[0] == outs[1],
            "tokens": len(outs[0])}


def packed_equals_separate(device: torch.device, mode: str, block_positions: str) -> dict[str, Any]:
    """Packed training's loss and gradients == one example per retrieval point, on ``device`` (fp32)."""
    from flashback_rag.models import add_marker_tokens, load_model
    from flashback_rag.patterns import build_block
    from flashback_rag.training.data import LeftPadCollator, layout_item, target_nll
    from flashback_rag.training.packing import collate_packed, pack_window, packed_token_nll, unpack_window
    from flashback_rag.training.tuning import LoraSettings, lora_model

    model, tokenizer = load_model("tiny-random-llama", device=device, dtype="float32")
    markers = add_marker_tokens(model, tokenizer)
    model = lora_model(model, LoraSettings(r=4, alpha=8, dropout=0.0), markers.as_list())
    gen = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:            # B starts at 0: give A a gradient to compare
            param.data.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    model.eval()
    stride, echo = 6, 3
    window = torch.randint(3, 250, (40,), generator=gen).tolist()
    points = [6, 12, 18, 27]
    passages = [[torch.randint(3, 250, (n,), generator=gen).tolist()] for n in (5, 3, 7, 2)]
    pad = tokenizer.pad_token_id or 0

    def on_device(batch):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def grads():
        out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        return out

    blocks = [build_block(found, markers) for found in passages]
    batch = collate_packed([pack_window(window, points, blocks, stride, echo, block_positions)], pad, mode=mode)
    packed = packed_token_nll(model, on_device(batch), markers.as_list()).sum()
    packed.backward()
    packed_grads = grads()
    items = [layout_item(ex, "append", markers, echo=echo, block_positions=block_positions)
             for ex in unpack_window(window, points, passages, stride)]
    separate, _ = target_nll(model, on_device(LeftPadCollator(pad)(items)), markers.as_list())
    separate.backward()
    separate_grads = grads()
    worst = max(float((packed_grads[n] - g).abs().max() / (g.abs().max() + 1e-12)) for n, g in separate_grads.items())
    marker_rows = [g for n, g in separate_grads.items() if "trainable_tokens" in n]
    loss_error = abs(float(packed.detach()) - float(separate.detach())) / abs(float(separate.detach()))
    return {"case": f"packed ({mode}, block {block_positions}) == separate examples", "loss_rel_error": loss_error,
            "grad_rel_error": worst, "marker_rows_have_gradient": bool(marker_rows and marker_rows[0].abs().sum() > 0),
            "holds": loss_error <= 1e-4 and worst <= 1e-3 and bool(marker_rows and marker_rows[0].abs().sum() > 0)}


def main(report, args, device: torch.device, deadline) -> str:
    from flashback_rag.models import load_model

    # float32 means float32: TF32 matrix products (if an image turned them on) round to 10 bits and would
    # make the cached and recomputed logits differ by far more than FP32_TOL
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    speed = benchmark("speed")
    # --tiny (the CPU check in the test suite, which has its own full parity tests): fewer of everything
    new_tokens, doc = (16, 12) if args.tiny else (48, 24)
    archs = ARCHS[:1] if args.tiny else ARCHS
    packed_cases = [("segments", "before"), ("mask", "after")] if args.tiny else \
        [(mode, where) for mode in ("segments", "mask") for where in ("after", "before")]
    all_hold = True
    for dtype in DTYPES:
        for arch in archs:
            model, tokenizer = load_model(f"tiny-random-{arch}", device=device, dtype=dtype)
            prompt = speed.random_prompt(speed.plain_token_ids(tokenizer), 24, seed=0)
            for name, fields in CASES.items():
                if not deadline.allows(5):
                    report.skip(f"{arch} {dtype} {name}", "time budget")
                    continue
                started = time.perf_counter()
                cached, reference, syncs = generation_pair(model, tokenizer, fields, prompt, new_tokens, doc, device)
                if dtype == "float32":
                    found = compare(cached, reference, FP32_TOL, clear_margin=0.0)
                    found["holds"] = found["holds"] and found["tokens_equal"]
                else:
                    scale = max(float(s[torch.isfinite(s)].abs().max()) for s in reference.scores)
                    found = compare(cached, reference, BF16_REL * scale, clear_margin=2 * BF16_REL * scale)
                found.update(arch=arch, dtype=dtype, case=name, seconds=round(time.perf_counter() - started, 2),
                             retrievals=len(cached.retrievals), syncs=syncs,
                             syncs_per_token=None if syncs is None else round(syncs / max(1, len(cached.token_ids)), 3))
                all_hold &= found["holds"]
                log(f"parity {arch} {dtype} {name}: {'holds' if found['holds'] else 'FAILS'} "
                    f"(max |dlogit| {found['max_logit_diff']:.3g}, syncs/token {found['syncs_per_token']})")
                report.add(found)
            if dtype == "float32" and arch == "llama" and deadline.allows(5):
                found = dict(sampled_repeat(model, tokenizer, prompt, new_tokens, doc), arch=arch, dtype=dtype)
                all_hold &= found["holds"]
                report.add(found)
            del model
    for mode, block_positions in packed_cases:
        if not deadline.allows(5):
            report.skip(f"packed {mode} {block_positions}", "time budget")
            continue
        found = dict(packed_equals_separate(device, mode, block_positions), arch="llama", dtype="float32")
        all_hold &= found["holds"]
        log(f"parity {found['case']}: {'holds' if found['holds'] else 'FAILS'}")
        report.add(found)
    report.data["all_hold"] = all_hold and not report.data["skipped"]
    return "partial" if report.data["skipped"] else "done"


if __name__ == "__main__":
    sys.exit(run_part("parity", main, description=__doc__.split("\n\n")[0]))
