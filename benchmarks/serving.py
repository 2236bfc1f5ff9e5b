"""FlashBack on vLLM: many generations at once (sequences/s, tokens/s), append vs prepend.

    python benchmarks/serving.py --backend vllm-server --concurrency 1 4 16 --T 1024 --init-length 512
    python benchmarks/serving.py --server http://127.0.0.1:8000/v1 --concurrency 1 4 16
    .venv-vllm/bin/python benchmarks/serving.py --backend vllm --concurrency 1 4 16    # in-process engine

For each concurrency c, c FlashBack generations run at once (``FlashBack.generate_batch``: one thread per
sequence, vLLM batches their requests), each with its own random prompt of ``--init-length`` tokens,
greedy until ``--T`` tokens, a random passage retrieved every ``--stride`` tokens. Reported per pattern:
sequences/s and generated tokens/s (wall clock around the whole batch), and the cached fraction (prompt
tokens vLLM served from its prefix cache over all prompt tokens sent). Results: stdout (``--json``) and
``benchmarks/results/<name>.{json,md}`` with the command, the thread counts and the load average.

This module is also the vLLM half of ``benchmarks/speed.py --backend vllm|vllm-server|--server URL``:
the served model folder (marker tokens added), the backend as a context manager, the schedule of
requests vLLM's prefix cache sees, and its calibration.

Fair inputs on vLLM. vLLM's prefix cache outlives a generation: a second run with the same prompt, or a
passage that comes back, is served from the cache, for prepend as for append. So every generation here
(warm-up, each repeat, each pattern, each sequence of a batch) gets its own random prompt and its own
stream of random passages; a passage never repeats. ``*_first_cached`` in the reports counts the cached
tokens of first requests, which such fresh inputs keep at 0 (a block of 32 random tokens is never sent
twice), and the expected cached fraction from :func:`served_schedule` is printed beside the measured one.

vLLM starts worker processes with ``spawn``: this script (and speed.py) keep their work under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:       # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from flashback_rag import FlashBack, FlashBackConfig  # noqa: E402
from flashback_rag.errors import ConfigError, FlashBackError  # noqa: E402
from flashback_rag.results import GenerationResult  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SERVED_BACKENDS = ("vllm", "vllm-server")
SWEEP_PATTERNS = ("prepend", "append")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- arguments
def add_served_arguments(p: argparse.ArgumentParser, backends: Sequence[str]) -> None:
    """The options speed.py and this script share for the vLLM backends."""
    p.add_argument("--backend", choices=list(backends), default=backends[0],
                   help="vllm: in-process engine (run with the vLLM environment's python); vllm-server: "
                        "launch `vllm serve` with --vllm-python; --server URL: drive a running one")
    p.add_argument("--server", metavar="URL", help="a running `vllm serve` (http://HOST:PORT/v1), with prefix "
                   "caching and --enable-prompt-tokens-details")
    p.add_argument("--tokenizer", help="with --server: the served model's tokenizer (default: the folder "
                   "the server loaded, when it is on this machine)")
    p.add_argument("--vllm-python", default=None,
                   help="python of the vLLM environment for --backend vllm-server (default: "
                        "$FLASHBACK_VLLM_PYTHON, else .venv-vllm/bin/python of this checkout)")
    p.add_argument("--block-size", type=int, default=32, help="vLLM KV block size (prefix-cache granularity)")
    p.add_argument("--kv-cache-gib", type=float, default=2.0, help="VLLM_CPU_KVCACHE_SPACE (CPU builds)")
    p.add_argument("--engine-threads", type=int, default=1,
                   help="OMP_NUM_THREADS of the vLLM engine (CPU builds)")


def check_served_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations that cannot work, each with the reason; --server implies vllm-server."""
    if args.server:
        if args.backend not in ("vllm-server", p.get_default("backend")):
            p.error(f"--server drives a running vLLM server: it cannot be combined with --backend {args.backend}")
        if not args.server.startswith(("http://", "https://")):
            p.error(f"--server must look like http://HOST:PORT/v1, got {args.server!r}")
        args.backend = "vllm-server"
    elif args.tokenizer:
        p.error("--tokenizer is for --server (a launched server's folder brings its tokenizer)")
    if args.block_size <= 0 or args.engine_threads <= 0 or args.kv_cache_gib <= 0:
        p.error("--block-size, --engine-threads and --kv-cache-gib must be positive")


def vllm_python(given: str | None) -> str:
    """The interpreter that has vLLM: the option, $FLASHBACK_VLLM_PYTHON, this checkout's .venv-vllm
    (``make vllm``), or this one if it can import vllm."""
    import importlib.util

    for name, c in (("--vllm-python", given), ("$FLASHBACK_VLLM_PYTHON", os.environ.get("FLASHBACK_VLLM_PYTHON"))):
        if c:
            if not Path(c).exists():
                raise ConfigError(f"{name} {c} does not exist")
            return str(c)
    local = ROOT / ".venv-vllm" / "bin" / "python"
    if local.exists():
        return str(local)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise ConfigError("no python with vLLM: give --vllm-python (or set $FLASHBACK_VLLM_PYTHON); "
                      "`make vllm` builds .venv-vllm")


# ----------------------------------------------------------------------------- the served model
def served_folder(name: str) -> Path:
    """A plain HF folder with the marker tokens, for ``name`` (an alias, hub id or folder): exported
    once (``export_merged(..., markers=True)``) into the flashback cache, or ``name`` itself when it
    is a folder that already has the markers."""
    import hashlib

    from flashback_rag.adapters import export_merged
    from flashback_rag.io_utils import cache_root

    path = Path(name).expanduser()
    if (path / "config.json").is_file() and _has_markers(path):
        return path
    key = hashlib.sha256(str(path.resolve() if path.exists() else name).encode()).hexdigest()[:10]
    out = cache_root() / "vllm" / f"bench-{path.name}-markers-{key}"
    if not (out / "config.json").is_file():
        log(f"exporting {name} with marker tokens to {out} (once)")
        export_merged(name, None, out, markers=True)
    return out


def _has_markers(folder: Path) -> bool:
    from transformers import AutoTokenizer

    from flashback_rag.models import marker_ids

    return marker_ids(AutoTokenizer.from_pretrained(str(folder))) is not None


def meta_model(folder: str | os.PathLike):
    """The model's architecture without weights (meta device), for the FLOPs model; None if unknown."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    except Exception as err:      # a remote server's model: no FLOPs model, the rest still runs
        log(f"no FLOPs model for {folder}: {type(err).__name__}: {err}")
        return None


@dataclass
class Served:
    """A vLLM backend ready to drive, and what the reports say about it."""

    backend: Any
    tokenizer: Any
    folder: str | None
    info: dict[str, Any] = field(default_factory=dict)


def engine_env(args) -> dict[str, str]:
    """Environment of a vLLM engine on a CPU: KV cache size, threads, no pinning (a shared machine)."""
    return {"VLLM_CPU_KVCACHE_SPACE": f"{args.kv_cache_gib:g}", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "OMP_NUM_THREADS": str(args.engine_threads)}


def max_model_len(args) -> int:
    """Room for the longest context any pattern sends, rounded up to whole 128-token steps."""
    longest = max(args.T) + args.doc_tokens + 2 + args.stride + args.echo_tokens + 8
    return 128 * math.ceil(longest / 128)


@contextmanager
def open_backend(args, name: str) -> Iterator[Served]:
    """The backend ``args`` ask for (``--backend vllm`` / ``vllm-server`` / ``--server URL``), stopped after."""
    from flashback_rag.backends.vllm_server import VLLMServerBackend
    from flashback_rag.serving import load_tokenizer

    dtype = args.dtype or "float32"
    if args.server:
        backend = VLLMServerBackend(args.server, timeout=600.0)
        local = backend.model_path if backend.model_path and Path(backend.model_path).is_dir() else None
        yield Served(backend, load_tokenizer(args.tokenizer, local), local,
                     {"backend": "vllm-server", "server": args.server, "served_model": backend.model,
                      "launched": False})
        return
    folder = served_folder(name)
    options = {"dtype": dtype, "block_size": args.block_size, "max_model_len": max_model_len(args),
               "enforce_eager": True}
    info = {"backend": args.backend, "folder": str(folder), "engine_env": engine_env(args), **options}
    if args.backend == "vllm-server":
        from flashback_rag.backends.vllm_launch import VLLMServer

        server = VLLMServer(folder, python=vllm_python(args.vllm_python), name=name, env=engine_env(args),
                            **options)
        with server:
            info.update(launched=True, server_command=server.command, startup_s=round(server.startup_seconds, 1),
                        vllm_version=_vllm_version(server.python))
            backend = VLLMServerBackend(server.url, timeout=600.0)
            yield Served(backend, load_tokenizer(None, folder), str(folder), info)
        return
    from flashback_rag.backends.vllm_engine import VLLMEngineBackend

    os.environ.update(engine_env(args))      # the engine-core process is spawned with this environment
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")    # stdout stays for --json
    started = time.perf_counter()
    backend = VLLMEngineBackend(str(folder), **options)
    try:
        import vllm

        info.update(startup_s=round(time.perf_counter() - started, 1), vllm_version=vllm.__version__)
        yield Served(backend, load_tokenizer(None, folder), str(folder), info)
    finally:
        backend.shutdown()


def _vllm_version(python: str) -> str | None:
    import subprocess

    try:
        out = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                             text=True, timeout=120)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- fresh inputs
class FreshInputs:
    """Prompts and passage streams no earlier generation used: run ``k`` draws from seed ``base + k``.

    Every call of :meth:`next` (one generation, or one batch) takes the next run number, so no prompt
    block and no passage is ever sent to the prefix cache twice. Passages are drawn from tokens that
    decode to text on their own: a byte token alone decodes to U+FFFD, and passages made of those would
    re-encode to the same replacement characters every time (a shared block for prepend to hit).
    """

    def __init__(self, speed, tokenizer, doc_tokens: int, seed: int) -> None:
        self.speed, self.tokenizer, self.doc_tokens = speed, tokenizer, doc_tokens
        self.ids = speed.plain_token_ids(tokenizer)
        self.text_ids = [i for i in self.ids if "\ufffd" not in tokenizer.decode([i])]
        self.base = (seed + 1) * 1_000_003
        self.runs = 0

    def next(self, init: int, count: int = 1):
        """``count`` prompts of ``init`` tokens, and a retriever whose every passage is new."""
        run = self.base + 1_000 * self.runs
        self.runs += 1
        prompts = [self.speed.random_prompt(self.ids, init, run + i) for i in range(count)]
        return prompts, self.speed.RandomPassages(self.tokenizer, self.doc_tokens, self.text_ids, seed=run)


# ----------------------------------------------------------------------------- the requests vLLM sees
@dataclass(frozen=True)
class Request:
    prompt: int       # tokens sent
    cached: int       # of them served from the prefix cache
    generated: int    # tokens generated by this request


def served_schedule(pattern: str, init: int, total: int, stride: int, block: int, block_size: int,
                    echo: int = 0) -> list[Request]:
    """The requests of one generation with fresh inputs, and what vLLM's prefix cache serves of each.

    Append's request at retrieval point i sends ``x[:i] + block``; the previous request sent
    ``x[:i-s] + old block`` and then generated ``x[i-s:i]``, so the common prefix is ``x[:i-s]``, served
    in whole blocks: ``(i - s) // block_size * block_size`` tokens. Prepend's request starts with a new
    passage: nothing cached (its ``<MARK_L>`` is shared, but one token is less than a block).

    >>> [r.cached for r in served_schedule("append", 512, 576, 16, 130, 32)]
    [0, 512, 512, 544]
    >>> {r.cached for r in served_schedule("prepend", 512, 576, 16, 130, 32)}
    {0}
    """
    new = total - init
    if pattern == "none":
        return [Request(init, 0, new)]
    if pattern == "append":
        block += min(echo, init)
    requests = []
    for r in range(math.ceil(new / stride)):
        i = init + r * stride
        generated = min(stride, new - r * stride)
        if pattern == "prepend":
            requests.append(Request(block + i, 0, generated))
        else:
            requests.append(Request(i + block, 0 if r == 0 else (i - stride) // block_size * block_size,
                                    generated))
    return requests


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def warn_if_cached(first_cached: int, what: str) -> None:
    """Fresh inputs keep first requests uncached; a hit means the server saw these inputs before."""
    if first_cached:
        log(f"warning: {what}: {first_cached} tokens of first requests were already in the prefix cache "
            "(a server that ran this benchmark before with the same --seed?): give a new --seed")


def expected_cached_fraction(requests: Sequence[Request]) -> float:
    return sum(r.cached for r in requests) / sum(r.prompt for r in requests)


def request_forwards(requests: Sequence[Request]) -> list[tuple[int, int]]:
    """The forwards of a schedule, as speed.flops reads them: (tokens fed, context before them)."""
    out = []
    for r in requests:
        out.append((r.prompt - r.cached, r.cached))
        out += [(1, r.prompt + j - 1) for j in range(1, r.generated)]
    return out


def predicted_served_seconds(requests: Sequence[Request], constants: dict[str, float]) -> float:
    """Per request: a fixed cost, its uncached prompt tokens, then one decode step per further token."""
    return sum(constants["request_s"] + (r.prompt - r.cached) * constants["prefill_token_s"]
               + (r.generated - 1) * constants["decode_step_s"] for r in requests)


def one_request(backend, context: list[int], max_tokens: int) -> tuple[float, int]:
    """Time one request straight on the backend; return (seconds, uncached prompt tokens)."""
    from flashback_rag.backends.base import SamplingSettings

    result = GenerationResult(text="", token_ids=[], finish_reason="length", pattern="none")
    session = backend.session(result, SamplingSettings())
    started = time.perf_counter()
    produced = sum(1 for _ in session.segment(list(context), max_tokens, list(context)))
    seconds = time.perf_counter() - started
    session.close()
    assert produced == max_tokens, (produced, max_tokens)
    return seconds, result.stats.request_prompt_tokens[0] - result.stats.request_cached_tokens[0]


def calibrate_served(backend, fresh: FreshInputs, init: int, block: int, repeats: int = 5) -> dict[str, float]:
    """The time model's three constants, measured on the backend: a request that prefills almost
    nothing and makes one token (``request_s``), one decode step, one prefilled token (a new block of
    ``block`` tokens after a cached prompt)."""
    (prompt,), _ = fresh.next(init)
    one_request(backend, prompt, 1)                                   # now the prompt is cached
    base = [one_request(backend, prompt, 1) for _ in range(repeats)]
    base_s, base_fed = statistics.median(s for s, _ in base), statistics.median(f for _, f in base)
    steps = 32
    decode = statistics.median(one_request(backend, prompt, 1 + steps)[0] for _ in range(max(2, repeats // 2)))
    prefill = []
    for _ in range(max(2, repeats // 2)):
        (extra,), _ = fresh.next(block)
        seconds, fed = one_request(backend, prompt + extra, 1)
        prefill.append((seconds - base_s) / max(1, fed - base_fed))
    per_token = max(statistics.median(prefill), 0.0)
    return {"request_s": max(base_s - base_fed * per_token, 0.0), "decode_step_s": max((decode - base_s) / steps, 0.0),
            "prefill_token_s": per_token}


# ----------------------------------------------------------------------------- engines
def engines_for(served: Served, patterns: Sequence[str], config: FlashBackConfig) -> dict[str, FlashBack]:
    """One FlashBack per pattern over the one backend; retrievers are set per run."""
    return {p: FlashBack(None, served.tokenizer, NoPassages() if p != "none" else None,
                         config.replace(pattern=p), backend=served.backend) for p in patterns}


class NoPassages:
    """Stands in until a run sets its own retriever."""

    def retrieve(self, query: str, k: int) -> list:
        return []


def check_result(result: GenerationResult, new_tokens: int) -> None:
    if result.stats.generated_tokens != new_tokens:
        raise FlashBackError(f"a {result.pattern} generation made {result.stats.generated_tokens} tokens, "
                             f"not {new_tokens}")
    if result.slides:
        raise FlashBackError("the context window slid (raise max_model_len): the schedule would not hold")


def totals(results: Sequence[GenerationResult]) -> dict[str, Any]:
    sent = sum(sum(r.stats.request_prompt_tokens) for r in results)
    cached = sum(sum(r.stats.request_cached_tokens) for r in results)
    return {"requests": sum(len(r.stats.request_prompt_tokens) for r in results), "prompt_tokens": sent,
            "cached_tokens": cached, "cached_fraction": cached / sent if sent else 0.0,
            "first_cached": sum(r.stats.request_cached_tokens[0] for r in results if r.stats.request_cached_tokens),
            "generated_tokens": sum(r.stats.generated_tokens for r in results)}


def run_point(args, speed, name: str, served: Served, total: int) -> dict[str, Any]:
    """speed.py's record for one T on a vLLM backend: same keys as the transformers run, plus the
    cached fractions (measured and expected) and what the first requests found cached."""
    init, stride, new_tokens = args.init_length, args.stride, total - args.init_length
    block = args.doc_tokens + 2
    config = FlashBackConfig(stride=stride, doc_tokens=args.doc_tokens, query_tokens=args.query_tokens, top_k=1,
                             markers=True, echo_tokens=args.echo_tokens)
    patterns = list(args.patterns)
    engines = engines_for(served, patterns, config)
    fresh = FreshInputs(speed, served.tokenizer, args.doc_tokens, args.seed * 7919 + total)

    def generate(p: str, n: int) -> tuple[float, GenerationResult]:
        (prompt,), retriever = fresh.next(init)
        engines[p].retriever = retriever if p != "none" else None
        started = time.perf_counter()
        result = engines[p].generate(prompt, max_new_tokens=n, ignore_eos=True)
        return time.perf_counter() - started, result

    for p in patterns:                          # warm-up: every pattern once, a short generation
        generate(p, min(new_tokens, 2 * stride))
    constants = calibrate_served(served.backend, fresh, init, stride + block)

    times: dict[str, list[float]] = {p: [] for p in patterns}
    results: dict[str, list[GenerationResult]] = {p: [] for p in patterns}
    for repeat in range(args.repeats):
        order = patterns[repeat % len(patterns):] + patterns[:repeat % len(patterns)]
        for p in order:
            seconds, result = generate(p, new_tokens)
            check_result(result, new_tokens)
            times[p].append(seconds)
            results[p].append(result)
            log(f"  {name} T={total} {served.info['backend']} {p:8s} {seconds:8.2f} s  "
                f"cached {result.stats.cached_fraction:.3f}")

    record: dict[str, Any] = {}
    plans = {p: served_schedule(p, init, total, stride, block, args.block_size, args.echo_tokens)
             for p in patterns}
    for p in patterns:
        stats = results[p][-1].stats
        record[f"{p}_s"] = statistics.median(times[p])
        record[f"{p}_runs_s"] = times[p]
        record[f"{p}_retrieval_s"] = stats.retrieval_seconds
        record[f"{p}_model_s"] = stats.model_seconds
        record[f"{p}_stats"] = stats.to_dict()
        summed = totals(results[p])
        record[f"{p}_cached_fraction"] = summed["cached_fraction"]
        record[f"{p}_first_cached"] = summed["first_cached"]
        warn_if_cached(summed["first_cached"], f"{p} T={total}")
        record[f"{p}_expected_cached_fraction"] = expected_cached_fraction(plans[p])
    if "prepend" in patterns and "append" in patterns:
        record["speedup"] = record["prepend_s"] / record["append_s"]
        record["predicted_speedup"] = ratio(predicted_served_seconds(plans["prepend"], constants),
                                            predicted_served_seconds(plans["append"], constants))
        model = meta_model(served.folder) if served.folder else None
        if model is not None:
            record["flops_speedup"] = (speed.flops(request_forwards(plans["prepend"]), model)
                                       / speed.flops(request_forwards(plans["append"]), model))
    if "append" in patterns and "none" in patterns:
        record["append_over_none"] = record["append_s"] / record["none_s"]
    record["calibration"] = constants
    first = next((p for p in patterns if p != "none"), None)
    record["block_tokens"] = [r.block_tokens for r in results[first][-1].retrievals][:3] if first else []
    return record


# ----------------------------------------------------------------------------- the concurrency sweep
def sweep(args, speed, name: str, served: Served) -> list[dict[str, Any]]:
    """For each concurrency c and pattern: c generations at once, timed as one batch."""
    total, init = args.T[0], args.init_length
    new_tokens = total - init
    config = FlashBackConfig(stride=args.stride, doc_tokens=args.doc_tokens, query_tokens=args.query_tokens,
                             top_k=1, markers=True, echo_tokens=args.echo_tokens)
    engines = engines_for(served, args.patterns, config)
    fresh = FreshInputs(speed, served.tokenizer, args.doc_tokens, args.seed)

    def batch(p: str, c: int, n: int) -> tuple[float, list[GenerationResult]]:
        prompts, retriever = fresh.next(init, c)
        engines[p].retriever = retriever
        started = time.perf_counter()
        out = engines[p].generate_batch(prompts, n, max_concurrency=c, ignore_eos=True)
        return time.perf_counter() - started, out

    for p in args.patterns:       # warm-up
        batch(p, 2, min(new_tokens, 2 * args.stride))
    rows = []
    for c in args.concurrency:
        for repeat in range(args.repeats):
            turn = repeat % len(args.patterns)
            order = list(args.patterns)[turn:] + list(args.patterns)[:turn]
            for p in order:
                load_before = speed.load_average()
                seconds, results = batch(p, c, new_tokens)
                for r in results:
                    check_result(r, new_tokens)
                summed = totals(results)
                warn_if_cached(summed["first_cached"], f"{p} c={c}")
                row = {"pattern": p, "concurrency": c, "repeat": repeat, "seconds": seconds,
                       "sequences_per_s": c / seconds, "tokens_per_s": summed["generated_tokens"] / seconds,
                       "latency_median_s": statistics.median(r.stats.total_seconds for r in results),
                       **summed, "load_before": load_before, "load_after": speed.load_average()}
                rows.append(row)
                log(f"  c={c:3d} {p:8s} {seconds:8.2f} s  {row['sequences_per_s']:.3f} seq/s  "
                    f"{row['tokens_per_s']:.1f} tok/s  cached {summed['cached_fraction']:.3f}  "
                    f"load {row['load_after']}")
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per concurrency: the median over repeats of each pattern's figures, and append/prepend.

    >>> rows = [{"pattern": p, "concurrency": 4, "seconds": s, "sequences_per_s": 4 / s,
    ...          "tokens_per_s": 512 / s, "cached_fraction": f, "first_cached": 0, "load_after": [1.0],
    ...          "latency_median_s": s}
    ...         for p, s, f in (("prepend", 8.0, 0.0), ("append", 4.0, 0.8))]
    >>> line = summarize(rows)[0]
    >>> line["concurrency"], line["append_tokens_per_s"], line["throughput_ratio"]
    (4, 128.0, 2.0)
    """
    out = []
    for c in dict.fromkeys(r["concurrency"] for r in rows):
        line: dict[str, Any] = {"concurrency": c}
        for p in dict.fromkeys(r["pattern"] for r in rows):
            mine = [r for r in rows if r["concurrency"] == c and r["pattern"] == p]
            if not mine:
                continue
            for key in ("seconds", "sequences_per_s", "tokens_per_s", "cached_fraction", "latency_median_s"):
                line[f"{p}_{key}"] = statistics.median(r[key] for r in mine)
            line[f"{p}_first_cached"] = sum(r["first_cached"] for r in mine)
            line[f"{p}_load_after"] = mine[-1]["load_after"]
        if "append_tokens_per_s" in line and "prepend_tokens_per_s" in line:
            line["throughput_ratio"] = line["append_tokens_per_s"] / line["prepend_tokens_per_s"]
        out.append(line)
    return out


def sweep_markdown(report: dict[str, Any]) -> str:
    """The sweep as a Markdown table, with the settings, threads, load and command under it
    (s/seq: the median time one sequence took from its first request to its last token).

    >>> report = {"model": "m", "T": 640, "init_length": 512, "stride": 16, "doc_tokens": 128,
    ...           "summary": [{"concurrency": 1, "prepend_sequences_per_s": 0.1, "prepend_tokens_per_s": 12.8,
    ...                        "prepend_cached_fraction": 0.0, "append_sequences_per_s": 0.2,
    ...                        "append_tokens_per_s": 25.6, "append_cached_fraction": 0.79,
    ...                        "throughput_ratio": 2.0, "prepend_latency_median_s": 10.0,
    ...                        "append_latency_median_s": 5.0}],
    ...           "backend": {"backend": "vllm-server"}, "threads": {"engine_omp": 1}, "repeats": 1,
    ...           "load_before": [0.5, 0.5, 0.5], "load_after": [1.0, 1.0, 1.0], "command": "c"}
    >>> print(sweep_markdown(report).splitlines()[2])
    | 1 | 0.100 | 0.200 | 12.8 | 25.6 | 2.00x | 10.0 | 5.0 | 0.000 | 0.790 |
    """
    head = ["concurrency", "prepend seq/s", "append seq/s", "prepend tok/s", "append tok/s",
            "append/prepend", "prepend s/seq", "append s/seq", "prepend cached", "append cached"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(value, digits):
        return "" if value is None else f"{value:.{digits}f}"

    for s in report["summary"]:
        ratio = s.get("throughput_ratio")
        lines.append("| " + " | ".join([
            str(s["concurrency"]), f(s.get("prepend_sequences_per_s"), 3), f(s.get("append_sequences_per_s"), 3),
            f(s.get("prepend_tokens_per_s"), 1), f(s.get("append_tokens_per_s"), 1),
            f(ratio, 2) + ("x" if ratio is not None else ""),
            f(s.get("prepend_latency_median_s"), 1), f(s.get("append_latency_median_s"), 1),
            f(s.get("prepend_cached_fraction"), 3), f(s.get("append_cached_fraction"), 3)]) + " |")
    b = report["backend"]
    lines += ["", f"{report['model']}, T = {report['T']} ({report['init_length']}-token random prompt, "
                  f"{report['T'] - report['init_length']} generated), stride {report['stride']}, "
                  f"{report['doc_tokens']}-token random passages, greedy, EOS ignored. "
                  f"Backend {b['backend']}" + (f" (vLLM {b['vllm_version']})" if b.get("vllm_version") else "")
              + f"; threads {report['threads']}. Median of {report['repeats']} run(s) per cell. "
                f"Load average before/after: {report['load_before']} / {report['load_after']}.",
              "", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model alias, folder or hub id (exported with markers)")
    add_served_arguments(p, ("vllm-server", "vllm"))
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16],
                   help="sequences generated at once, one batch per value")
    p.add_argument("--T", nargs=1, type=int, default=[1024], help="total length: prompt + generated")
    p.add_argument("--init-length", type=int, default=512, help="prompt tokens")
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--doc-tokens", type=int, default=128)
    p.add_argument("--query-tokens", type=int, default=32)
    p.add_argument("--echo-tokens", type=int, default=0)
    p.add_argument("--patterns", nargs="+", default=list(SWEEP_PATTERNS), choices=["prepend", "append", "none"])
    p.add_argument("--repeats", type=int, default=1, help="batches per (concurrency, pattern); the median is kept")
    p.add_argument("--dtype", default=None, help="vLLM dtype (default float32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file name (default serving-<model>-T<T>)")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/ files")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    check_served_arguments(p, args)
    if args.T[0] <= args.init_length:
        p.error(f"--T {args.T[0]} must be larger than --init-length {args.init_length}")
    if min(args.init_length, args.stride, args.doc_tokens, args.query_tokens, args.repeats) <= 0:
        p.error("--init-length, --stride, --doc-tokens, --query-tokens and --repeats must be positive")
    if min(args.concurrency) <= 0:
        p.error(f"--concurrency values must be positive, got {args.concurrency}")
    if len(set(args.concurrency)) != len(args.concurrency):
        p.error(f"--concurrency values repeat: {args.concurrency}")
    return args


def load_speed():
    """benchmarks/speed.py as a module (random prompts and passages, FLOPs, machine info)."""
    import importlib.util

    key = "flashback_benchmarks_speed"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name("speed.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def main(argv=None) -> int:
    args = parse_args(argv)
    speed = load_speed()
    import torch

    report: dict[str, Any] = {
        "command": "python benchmarks/serving.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "T": args.T[0], "init_length": args.init_length, "stride": args.stride,
        "doc_tokens": args.doc_tokens, "query_tokens": args.query_tokens, "echo_tokens": args.echo_tokens,
        "repeats": args.repeats, "load_before": speed.load_average()}
    try:
        with open_backend(args, args.model) as served:
            report["backend"] = served.info
            rows = sweep(args, speed, args.model, served)
    except FlashBackError as err:
        print(f"serving.py: error: {err}", file=sys.stderr)
        return 2
    report["load_after"] = speed.load_average()
    report["threads"] = {"engine_omp": None if args.server else args.engine_threads,
                         "client_torch": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    report["machine"] = speed.machine_info(torch.device("cpu"))
    report["library"] = speed.library_info()
    report["rows"], report["summary"] = rows, summarize(rows)
    name = args.name or f"serving-{Path(args.model).name}-T{args.T[0]}"
    if not args.no_save:
        from flashback_rag.io_utils import atomic_write_json, atomic_write_text

        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_json(RESULTS / f"{name}.json", report)
        atomic_write_text(RESULTS / f"{name}.md", sweep_markdown(report))
        log(f"wrote {RESULTS / name}.{{json,md}}")
    print(json.dumps(report, indent=2) if args.json else sweep_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
