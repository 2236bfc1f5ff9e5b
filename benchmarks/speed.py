"""Speed of FlashBack (append) against In-Context RALM (prepend) and no retrieval, side by side.

    python benchmarks/speed.py --model smollm2-135m --T 1024 --init-length 512 --stride 16 --doc-tokens 128 --json
    python benchmarks/speed.py --model smollm2-135m --T 512 1024 2048 --init-length 512   # a sweep over T
    python benchmarks/speed.py --random-init llama-7b --device cuda --dtype bfloat16 --T 1024 2048 4096 --init-length 512
    python benchmarks/speed.py --model smollm2-135m --real-text --T 1024 --init-length 512  # real corpus + BM25
    python benchmarks/speed.py --real --T 1024 2048 --strides 4 8 16 32 64 once   # as users run it: see below
    python benchmarks/speed.py --backend vllm-server --T 1024 --init-length 512   # launches `vllm serve`
    python benchmarks/speed.py --server http://127.0.0.1:8000/v1 --T 1024         # a running server
    .venv-vllm/bin/python benchmarks/speed.py --backend vllm --T 1024             # in-process vLLM engine

``--real`` runs ``benchmarks/real_retrieval.py`` (its own flags): the shipped FlashBack model against prepend
and no retrieval on real pages with real BM25 retrieval in both regimes of the quality benchmark, over a
stride sweep, recording how often the passage really changes. Everything else here is the worst case
for prepend:

The runtime test of the paper: a random prompt of ``--init-length`` tokens, greedy generation until the
text is ``--T`` tokens long, and a random passage of ``--doc-tokens`` tokens retrieved every ``--stride``
generated tokens. Every pattern runs through the same engine code path (``flashback_rag.FlashBack``
with a retriever that returns random passages), on the same model object, dtype, device and kernels,
in one process: prepend (In-Context RALM: passage before the prefix, recomputed at each retrieval),
append (FlashBack: passage after the prefix between markers, prefix cache kept), and none (no retrieval,
the lower bound). ``--lora`` adds the same runs with a LoRA adapter (r=16 on the attention projections,
random weights: values do not change speed) injected into the model. ``--real-text`` replaces the random
prompt and passages with the Python documentation and its BM25 index, and reports retrieval time apart.

Timing: one warm-up generation per pattern, then ``--repeats`` rounds in which the patterns take turns
(so slow drift of a shared machine hits all of them alike); wall clock around each generation with
device synchronisation; the median is reported. Results go to stdout (``--json``: one JSON object) and to
``benchmarks/results/<name>.{json,md,png}`` (the plot: time vs T, one line per pattern).

The cost model (why append wins, and by how much)
--------------------------------------------------
Let L0 be the prompt length, n = T - L0 the generated tokens, s the stride, d' = d + 2 the block
(passage plus two markers), R = ceil(n / s) retrievals. Both retrieving patterns feed n - R tokens one
at a time (decode steps) and, at each retrieval point r = 0..R-1, one multi-token forward:

    prepend:  d' + L0 + r*s tokens (the whole context again: the passage in front invalidates it all)
    append:   L0 + d' at r = 0, then s + d' (the last stride's tokens + the new block; the prefix stays)
    none:     L0 once, then n - 1 decode steps

Summed over r, prepend re-encodes about R*(d' + L0) + s*R^2/2 tokens, quadratic in T: with L0 = 0
that is T(T+s)/(2s) tokens, which at 4bh^2 l FLOPs per token (the attention projections) is the
paper's C0 = 2T(T+s)bh^2 l/s. Append re-encodes R*(s + d') tokens, linear in T; the paper's
C1 = 2l(4r+1)bhT(d+2s)/s is the LoRA adapter's share of that work. Two predictions are printed:

* ``flops_speedup``: FLOPs of the prepend schedule over FLOPs of the append schedule, every token
  costing 2 x (linear-layer parameters) plus its attention (4 x layers x width x context), the output
  layer once per forward. This is the paper's model: it holds when every forward is compute bound.
* ``predicted_speedup``: the same schedules priced with two constants measured on this machine
  before the runs (the time of one decode step, and the per-token time of a forward of s + d' tokens
  after the prompt). A decode step of a small model is memory bound: it reads all the weights to
  produce one token and costs as much as tens of prefill tokens, which both patterns pay alike. This
  is why the measured speed-up on a 135M model on a CPU is far below ``flops_speedup``, and why it
  grows with model size and T. The calibration ignores that attention makes long recomputes a little
  dearer per token, so it slightly under-predicts prepend at large T.

Exactness is not traded for speed: the engine's cached decoding gives the tokens and logits of a full
recompute (tests/unit/test_parity.py), whatever the pattern.

On vLLM (``--backend vllm``, ``--backend vllm-server``, ``--server URL``)
-----------------------------------------------------------------------
The same engine loop drives vLLM, one request per stride; vLLM's automatic prefix cache does the crop,
in whole KV blocks (``--block-size``, 32). The model is exported once with the marker tokens added. The
vLLM half lives in ``benchmarks/serving.py`` (which also sweeps concurrency); the differences here:

* Every generation (warm-up, each repeat, each pattern) gets a new random prompt and new passages:
  vLLM's cache outlives a generation, and a repeated prompt or passage would be served from it, to
  prepend as to append. ``{pattern}_first_cached`` (tokens of first requests found cached) shows it is 0.
* ``{pattern}_cached_fraction``: prompt tokens served from the prefix cache over all prompt tokens
  sent (``prompt_tokens_details.cached_tokens``); ``{pattern}_expected_cached_fraction`` is what
  ``serving.served_schedule`` predicts for it (append keeps ``x[:i-s]`` in whole blocks; prepend none).
* ``predicted_speedup`` prices that request schedule with three constants measured on the backend (a
  request's fixed cost, a decode step, a prefilled token); ``flops_speedup`` prices it in FLOPs.
* ``--threads`` is not used: ``--engine-threads`` sets the engine's OMP_NUM_THREADS (CPU builds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:       # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from harness import save_figure, sibling  # noqa: E402
from flashback_rag import FlashBack, FlashBackConfig  # noqa: E402
from flashback_rag.errors import FlashBackError  # noqa: E402
from flashback_rag.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from flashback_rag.kv_cache import CachedLogits, crop_cache  # noqa: E402
from flashback_rag.results import GenerationStats  # noqa: E402
from flashback_rag.retrievers import Passage  # noqa: E402




serving = sibling("serving")     # the vLLM half: served model, backends, request schedule, sweep

RESULTS = Path(__file__).resolve().parent / "results"
PATTERNS = ("prepend", "append", "none")

# LoRA target modules per architecture (keyed by config.model_type): the attention projections.
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "gpt2": ["c_attn", "attn.c_proj"],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs
class RandomPassages:
    """A retriever that returns the i-th of a fixed, seeded series of random passages on its i-th call.

    Each passage is the text of ``2 x doc_tokens`` random token ids, so after re-tokenisation and the
    engine's truncation it is ``doc_tokens`` long. A new instance with the same seed gives every
    pattern the same passages. Safe to share between threads: no two calls get the same passage.
    """

    def __init__(self, tokenizer, doc_tokens: int, ids: list[int], seed: int = 0) -> None:
        self.tokenizer, self.doc_tokens, self.ids, self.seed = tokenizer, doc_tokens, ids, seed
        self.calls = 0
        self._lock = threading.Lock()

    def retrieve(self, query: str, k: int) -> list[Passage]:
        with self._lock:
            call = self.calls
            self.calls += 1
        generator = torch.Generator().manual_seed(self.seed * 100_003 + call)
        out = []
        for rank in range(k):
            pick = torch.randint(0, len(self.ids), (2 * self.doc_tokens,), generator=generator)
            text = self.tokenizer.decode([self.ids[i] for i in pick.tolist()])
            out.append(Passage(id=f"random-{self.seed}-{call}-{rank}", text=text))
        return out


def plain_token_ids(tokenizer) -> list[int]:
    """Ids a random prompt may use: the tokenizer's own, minus special and added tokens."""
    special = set(tokenizer.all_special_ids)
    added = set(tokenizer.get_added_vocab().values())
    return [i for i in range(tokenizer.vocab_size) if i not in special and i not in added]


def random_prompt(ids: list[int], length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [ids[i] for i in torch.randint(0, len(ids), (length,), generator=generator).tolist()]


# ----------------------------------------------------------------------------- model
def build_model(args, name: str, longest: int):
    if args.random_init:
        from flashback_rag.shapes import random_model

        return random_model(name, device=args.device, dtype=args.dtype, max_positions=longest)
    from flashback_rag import load_model

    return load_model(name, device=args.device, dtype=args.dtype)


def add_lora(model, rank: int) -> None:
    """Inject a LoRA adapter (random A and B, so it is not an identity) into the attention projections."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise FlashBackError("--lora needs peft: pip install 'flashback-rag[train]'") from None
    targets = LORA_TARGETS.get(model.config.model_type)
    if targets is None:
        raise FlashBackError(f"no LoRA target table for model type {model.config.model_type!r}")
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False,
                        fan_in_fan_out=model.config.model_type == "gpt2")
    # inject_adapter_in_model keeps the model's own forward (and its logits_to_keep argument).
    inject_adapter_in_model(config, model)
    model.to(next(model.parameters()).device, dtype=next(model.parameters()).dtype)
    model.eval()


def remove_lora(model) -> None:
    """Put back the plain linear layers (so later runs time the model without an adapter)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())


# ----------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(fb: FlashBack, prompt, new_tokens: int, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    result = fb.generate(prompt, max_new_tokens=new_tokens, ignore_eos=True)
    synchronize(device)
    return time.perf_counter() - start, result


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """The most GPU memory allocated since the last reset (weights, cache, activations), GiB; None on a CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def calibrate(model, prompt: list[int], block: int, repeats: int = 5) -> dict[str, float]:
    """Measure the two constants of the time model: one decode step, and per-token prefill time."""
    device = next(model.parameters()).device
    source = CachedLogits(model, GenerationStats(), capacity=len(prompt) + block + repeats + 1)
    extra = (prompt * (block // len(prompt) + 1))[:block]
    decode, prefill = [], []
    with torch.inference_mode():
        source.resync(prompt)
        for i in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            source.extend(prompt[i])
            synchronize(device)
            decode.append(time.perf_counter() - start)
        for _ in range(max(2, repeats // 2)):
            synchronize(device)
            start = time.perf_counter()
            crop_cache(source.cache, len(prompt))      # back to the prompt: feed `block` new tokens
            source.held = list(prompt)
            source.resync(prompt + extra)
            synchronize(device)
            prefill.append((time.perf_counter() - start) / block)
    return {"decode_step_s": statistics.median(decode), "prefill_token_s": statistics.median(prefill)}


# ----------------------------------------------------------------------------- cost model
def schedule(pattern: str, init: int, total: int, stride: int, block: int, markers: bool = True,
             echo: int = 0) -> list[tuple[int, int]]:
    """The forwards a generation makes: (tokens fed, context length before them), in order.

    With markers, prepend's recomputes all start with the same ``<MARK_L>``, whose cached position the
    engine keeps (the longest common prefix rule), so they feed one token less. Append's echo
    (``echo`` prefix tokens repeated after the block) belongs to the block: k more tokens per retrieval.
    """
    new = total - init
    if pattern == "append":
        block += min(echo, init)
    if pattern == "none":
        return [(init, 0)] + [(1, init + j) for j in range(1, new)]
    forwards = []
    for j in range(new):
        length = init + j                      # prompt + generated so far
        if j % stride == 0:
            r = j // stride
            if pattern == "prepend":
                shared = int(markers and r > 0)
                forwards.append((block + length - shared, shared))
            elif r == 0:
                forwards.append((init + block, 0))
            else:
                forwards.append((stride + block, length - stride))
        else:
            forwards.append((1, length + block))
    return forwards


def linear_params(model) -> int:
    """Parameters in the linear layers a token passes through (not the embeddings)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() for n, p in model.named_parameters()
               if p.dim() == 2 and id(p) not in embeddings and "lm_head" not in n)


def flops(forwards, model, lora_rank: int = 0) -> float:
    """FLOPs of a schedule: 2 x params per token, attention over the context, the output layer once."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    width = getattr(cfg, "hidden_size", None) or cfg.n_embd
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    vocab = model.get_output_embeddings().weight.shape[0]
    per_token = 2 * linear_params(model)
    if lora_rank:
        per_token += 2 * layers * 4 * 2 * width * lora_rank     # 4 projections, A and B
    total = 0.0
    for fed, context in forwards:
        attention = 4 * layers * width * (fed * context + fed * (fed + 1) / 2)
        total += fed * per_token + attention + 2 * width * vocab
    return total


def predicted_seconds(forwards, constants: dict[str, float]) -> float:
    return sum(constants["decode_step_s"] if fed == 1 else fed * constants["prefill_token_s"]
               for fed, _ in forwards)


# ----------------------------------------------------------------------------- one (model, T) point
def run_point(args, name: str, model, tokenizer, total: int, lora: bool) -> dict[str, Any]:
    init, stride, device = args.init_length, args.stride, next(model.parameters()).device
    new_tokens = total - init
    config = FlashBackConfig(stride=stride, doc_tokens=args.doc_tokens, query_tokens=args.query_tokens,
                             top_k=1, markers=True, echo_tokens=args.echo_tokens)
    ids = plain_token_ids(tokenizer)
    if args.real_text:
        from flashback_rag.demo import demo_index, demo_prompt
        from flashback_rag.retrievers import load_index

        retriever = load_index(demo_index())
        prompt_text = demo_prompt(tokenizer, init)
        prompt = tokenizer(prompt_text, add_special_tokens=False).input_ids[:init]
        make_retriever = lambda: retriever                                  # noqa: E731
        patterns = [p for p in args.patterns if p != "none"] + (["none"] if "none" in args.patterns else [])
    else:
        prompt = random_prompt(ids, init, args.seed)
        make_retriever = lambda: RandomPassages(tokenizer, args.doc_tokens, ids, args.seed)  # noqa: E731
        patterns = list(args.patterns)
    engines = {p: FlashBack(model, tokenizer, make_retriever() if p != "none" else None,
                            config.replace(pattern=p)) for p in patterns}
    block = args.doc_tokens + 2

    # Warm-up: every pattern once on a short generation (kernels, allocator, passage tokenisation).
    for p in patterns:
        engines[p].retriever = make_retriever() if p != "none" else None
        timed_generate(engines[p], prompt, min(new_tokens, 2 * stride), device)
    constants = calibrate(model, prompt, stride + block)

    times: dict[str, list[float]] = {p: [] for p in patterns}
    peaks: dict[str, list[float]] = {p: [] for p in patterns}
    results: dict[str, Any] = {}
    for repeat in range(args.repeats):
        order = patterns[repeat % len(patterns):] + patterns[:repeat % len(patterns)]
        for p in order:
            engines[p].retriever = make_retriever() if p != "none" else None
            reset_peak_memory(device)
            seconds, result = timed_generate(engines[p], prompt, new_tokens, device)
            times[p].append(seconds)
            if device.type == "cuda":
                peaks[p].append(peak_memory_gib(device))
            results[p] = result
            log(f"  {name} T={total}{' +lora' if lora else ''} {p:8s} {seconds:8.2f} s")

    suffix = "_lora" if lora else ""
    record: dict[str, Any] = {}
    for p in patterns:
        stats = results[p].stats
        record[f"{p}{suffix}_s"] = statistics.median(times[p])
        record[f"{p}{suffix}_runs_s"] = times[p]
        record[f"{p}{suffix}_retrieval_s"] = stats.retrieval_seconds
        record[f"{p}{suffix}_model_s"] = stats.model_seconds
        record[f"{p}{suffix}_stats"] = stats.to_dict()
        if peaks[p]:
            record[f"{p}{suffix}_peak_gib"] = max(peaks[p])
        # the two predictions for this pattern alone, beside its measured time
        plan = schedule(p, init, total, stride, block, echo=args.echo_tokens)
        record[f"{p}{suffix}_flops"] = flops(plan, model, args.lora_rank if lora else 0)
        record[f"{p}{suffix}_predicted_s"] = predicted_seconds(plan, constants)
        assert stats.generated_tokens == new_tokens, (p, stats.generated_tokens)
    if "prepend" in patterns and "append" in patterns:
        record[f"speedup{suffix}"] = record[f"prepend{suffix}_s"] / record[f"append{suffix}_s"]
        plans = {p: schedule(p, init, total, stride, block, echo=args.echo_tokens)
                 for p in ("prepend", "append", "none")}
        record[f"predicted_speedup{suffix}"] = (predicted_seconds(plans["prepend"], constants)
                                                / predicted_seconds(plans["append"], constants))
        rank = args.lora_rank if lora else 0
        record[f"flops_speedup{suffix}"] = flops(plans["prepend"], model, rank) / flops(plans["append"], model, rank)
        if args.real_text:   # the model's share of the time, retrieval set apart
            record[f"speedup_model_only{suffix}"] = (
                (record[f"prepend{suffix}_s"] - record[f"prepend{suffix}_retrieval_s"])
                / (record[f"append{suffix}_s"] - record[f"append{suffix}_retrieval_s"]))
    if "append" in patterns and "none" in patterns:
        record[f"append_over_none{suffix}"] = record[f"append{suffix}_s"] / record[f"none{suffix}_s"]
    if not lora:
        record["calibration"] = constants
        record["block_tokens"] = [r.block_tokens for r in results[patterns[0]].retrievals][:3] if patterns[0] != "none" else []
    return record


# ----------------------------------------------------------------------------- reports
def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def library_info() -> dict[str, Any]:
    """Which flashback_rag ran: its folder, and the git commit there (``dirty``: uncommitted changes)."""
    import subprocess

    import flashback_rag

    folder = Path(flashback_rag.__file__).resolve().parent
    info: dict[str, Any] = {"path": str(folder)}
    try:
        git = ["git", "-C", str(folder)]
        info["commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
        info["dirty"] = bool(subprocess.run(git + ["status", "--porcelain", "--", "."], capture_output=True,
                                            text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def markdown(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lora = any("append_lora_s" in r for r in runs)
    cached = any("append_cached_fraction" in r or "prepend_cached_fraction" in r for r in runs)
    head = ["model", "T", "init", "stride", "doc", "prepend s", "append s", "none s", "speed-up",
            "predicted", "FLOPs model", "append/none"]
    if lora:
        head += ["prepend+LoRA s", "append+LoRA s", "speed-up (LoRA)"]
    if cached:
        head += ["prepend cached", "append cached (expected)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(value, digits=2):
        return "" if value is None else f"{value:.{digits}f}"

    for r in runs:
        row = [r["model"], str(r["T"]), str(r["init_length"]), str(r["stride"]), str(r["doc_tokens"]),
               f(r.get("prepend_s")), f(r.get("append_s")), f(r.get("none_s")),
               f(r.get("speedup")) + ("x" if r.get("speedup") else ""), f(r.get("predicted_speedup")),
               f(r.get("flops_speedup")), f(r.get("append_over_none"))]
        if lora:
            row += [f(r.get("prepend_lora_s")), f(r.get("append_lora_s")), f(r.get("speedup_lora"))]
        if cached:
            expected = r.get("append_expected_cached_fraction")
            row += [f(r.get("prepend_cached_fraction"), 3),
                    f(r.get("append_cached_fraction"), 3) + (f" ({expected:.3f})" if expected is not None else "")]
        lines.append("| " + " | ".join(row) + " |")
    m = meta["machine"]
    served = meta.get("backend")
    if served:
        where = (f"backend {served['backend']}"
                 + (f" (vLLM {served['vllm_version']})" if served.get("vllm_version") else "")
                 + (f", engine env {served['engine_env']}" if served.get("engine_env") else "")
                 + (f", block size {served['block_size']}" if served.get("block_size") else ""))
    else:
        where = f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}"
    lines += ["", f"Machine: {m.get('cpu', '?')} ({m['cpu_count']} cores, {m['threads']} "
                  f"{'client ' if served else ''}threads), "
                  f"{where}, torch {m['torch']}, "
                  f"transformers {m.get('transformers', '?')}, dtype {meta['dtype']}. "
                  f"Load average before/after: {meta['load_before']} / {meta['load_after']}. "
                  f"Median of {meta['repeats']} run(s).",
              "", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install 'flashback-rag[bench]')")
        return False
    models = list(dict.fromkeys(r["model"] for r in runs))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    styles = {"prepend": "tab:red", "append": "tab:green", "none": "tab:gray"}
    for ax, name in zip(axes[0], models):
        points = sorted((r for r in runs if r["model"] == name), key=lambda r: r["T"])
        for pattern, color in styles.items():
            for suffix, dash in (("", "-"), ("_lora", "--")):
                key = f"{pattern}{suffix}_s"
                xs = [r["T"] for r in points if key in r]
                if xs:
                    ax.plot(xs, [r[key] for r in points if key in r], dash, color=color, marker="o",
                            label=pattern + (" + LoRA" if suffix else ""))
        ax.set_xlabel("T (total tokens)")
        ax.set_ylabel("generation time (s)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(textwrap.fill(title, 100), fontsize=8)
    save_figure(fig, path)
    return True


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["smollm2-135m"],
                   help="model aliases, folders or hub ids (several: a sweep over models)")
    p.add_argument("--random-init", nargs="+", metavar="SHAPE",
                   help="instead of --model: shapes with random weights (flashback_rag.shapes.SHAPES), "
                        "e.g. llama-7b opt-125m")
    p.add_argument("--T", nargs="+", type=int, default=[1024], help="total length(s): prompt + generated")
    p.add_argument("--init-length", type=int, default=512, help="prompt tokens")
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--doc-tokens", type=int, default=128)
    p.add_argument("--query-tokens", type=int, default=32)
    p.add_argument("--echo-tokens", type=int, default=0,
                   help="append: repeat the last N prefix tokens after each block (k more prefill tokens per "
                        "retrieval)")
    p.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=PATTERNS)
    p.add_argument("--lora", action="store_true", help="also time every pattern with a LoRA adapter")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--real-text", action="store_true",
                   help="Python docs prompt and BM25 retrieval over the Python docs instead of random tokens")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per pattern (the median is reported)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: fp32 on CPU, bf16 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file name (default from model and T)")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/ files")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--merge", nargs="+", metavar="JSON", type=Path,
                   help="no timing: combine earlier results files into one table and plot (--name)")
    serving.add_served_arguments(p, ("transformers",) + serving.SERVED_BACKENDS)
    args = p.parse_args(argv)
    if args.merge:
        return args
    serving.check_served_arguments(p, args)
    if args.backend != "transformers":
        refused = [flag for flag, given in (("--lora", args.lora), ("--random-init", args.random_init),
                                            ("--real-text", args.real_text), ("--device", args.device),
                                            ("--threads", args.threads)) if given]
        if refused:
            p.error(f"{', '.join(refused)}: not with --backend {args.backend} (LoRA and random shapes are "
                    "transformers-only; a fixed real-text prompt would hit vLLM's prefix cache on every "
                    "repeat; the engine's threads are --engine-threads)")
        if args.server and len(args.model) > 1:
            p.error("--server serves one model: give one --model (or none)")
    for total in args.T:
        if total <= args.init_length:
            p.error(f"--T {total} must be larger than --init-length {args.init_length}")
    if min(args.init_length, args.stride, args.doc_tokens, args.query_tokens, args.repeats) <= 0:
        p.error("--init-length, --stride, --doc-tokens, --query-tokens and --repeats must be positive")
    return args


def merge(paths: list[Path], name: str) -> int:
    """One table and plot from several results files (each point keeps its own machine and load)."""
    runs, metas = [], []
    for path in paths:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        runs += report.get("runs") or [report]
        metas.append({k: report[k] for k in ("command", "load_before", "load_after", "repeats", "machine",
                                             "dtype") if k in report})
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = dict(metas[0], command="; ".join(m["command"] for m in metas),
                load_before=[m["load_before"] for m in metas], load_after=[m["load_after"] for m in metas],
                repeats=",".join(str(m["repeats"]) for m in metas))
    atomic_write_text(RESULTS / f"{name}.md", markdown(runs, meta))
    plot(runs, RESULTS / f"{name}.png", "merged: " + ", ".join(p.name for p in paths))
    print(markdown(runs, meta))
    return 0


def main(argv=None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if "--real" in given:        # the real-retrieval comparison has its own flags (benchmarks/real_retrieval.py)
        return sibling("real_retrieval").main([a for a in given if a != "--real"])
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.name or "speed-merged")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.random_init or args.model
    meta = {"command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "repeats": args.repeats, "load_before": load_average(), "random_init": bool(args.random_init),
            "real_text": args.real_text}
    runs = []
    device = None
    if args.backend != "transformers":
        return main_served(args, names, meta)
    try:
        for name in names:
            longest = max(args.T) + args.doc_tokens + 2 + args.stride
            model, tokenizer = build_model(args, name, longest)
            device = next(model.parameters()).device
            meta["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
            for lora in ([False, True] if args.lora else [False]):
                if lora:
                    add_lora(model, args.lora_rank)
                for total in sorted(args.T):
                    log(f"{name}: T={total} init={args.init_length} stride={args.stride} "
                        f"doc={args.doc_tokens}{' +LoRA' if lora else ''}")
                    record = run_point(args, name, model, tokenizer, total, lora)
                    found = next((r for r in runs if r["model"] == name and r["T"] == total), None)
                    if found is None:
                        found = {"model": name, "T": total, "init_length": args.init_length,
                                 "stride": args.stride, "doc_tokens": args.doc_tokens, "echo_tokens": args.echo_tokens,
                                 "query_tokens": args.query_tokens}
                        runs.append(found)
                    found.update(record)
                if lora:
                    remove_lora(model)
            del model
    except FlashBackError as err:
        print(f"speed.py: error: {err}", file=sys.stderr)
        return 2
    meta["load_after"] = load_average()
    meta["machine"] = machine_info(device or torch.device("cpu"))

    name = args.name or ("speed-" + "-".join(names) + "-T" + "-".join(str(t) for t in sorted(args.T))
                         + ("-real" if args.real_text else "") + ("-lora" if args.lora else ""))
    return write_report(args, runs, meta, name)


def main_served(args, names: list[str], meta: dict[str, Any]) -> int:
    """The vLLM runs: one backend per model (launched, in process, or the given server), every T on it."""
    runs = []
    meta["dtype"] = args.dtype or "float32"
    try:
        for name in names:
            with serving.open_backend(args, name) as served:
                meta["backend"] = served.info
                for total in sorted(args.T):
                    log(f"{name}: T={total} init={args.init_length} stride={args.stride} "
                        f"doc={args.doc_tokens} on {served.info['backend']}")
                    runs.append({"model": name, "T": total, "init_length": args.init_length, "stride": args.stride,
                                 "doc_tokens": args.doc_tokens, "echo_tokens": args.echo_tokens,
                                 "query_tokens": args.query_tokens,
                                 **serving.run_point(args, this_module(), name, served, total)})
    except FlashBackError as err:
        print(f"speed.py: error: {err}", file=sys.stderr)
        return 2
    meta["load_after"] = load_average()
    meta["machine"] = machine_info(torch.device("cpu"))
    meta["library"] = library_info()
    meta["threads"] = {"engine_omp": None if args.server else args.engine_threads,
                       "client_torch": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    name = args.name or ("speed-" + "-".join(Path(n).name for n in names) + "-T"
                         + "-".join(str(t) for t in sorted(args.T)) + "-" + args.backend)
    return write_report(args, runs, meta, name)


def this_module():
    """This script's helpers for serving.py (loaded from a path, the module may not be in sys.modules)."""
    import types

    return types.SimpleNamespace(**globals())


def write_report(args, runs: list[dict[str, Any]], meta: dict[str, Any], name: str) -> int:
    report = dict(runs[0], **meta) if len(runs) == 1 else dict(meta, runs=runs)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_json(RESULTS / f"{name}.json", report)
        atomic_write_text(RESULTS / f"{name}.md", markdown(runs, meta))
        plot(runs, RESULTS / f"{name}.png", meta["command"])
        log(f"wrote {RESULTS / name}.{{json,md,png}}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(markdown(runs, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
