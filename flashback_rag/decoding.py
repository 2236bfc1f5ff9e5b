"""FlashBack: the cache-aware decoding loop with periodic re-retrieval.

    >>> from flashback_rag import FlashBack, FlashBackConfig, load_model
    >>> from flashback_rag.retrievers import BM25Retriever
    >>> model, tokenizer = load_model("tiny-random-llama")
    >>> retriever = BM25Retriever.build(["Paris is the capital of France.", "Rome is in Italy."])
    >>> fb = FlashBack(model, tokenizer, retriever, FlashBackConfig(pattern="append", stride=4))
    >>> result = fb.generate("The capital of France", max_new_tokens=8)
    >>> len(result.token_ids), len(result.retrievals)
    (8, 2)
    >>> fb.generate("The capital of France", max_new_tokens=8, use_cache=False).token_ids == result.token_ids
    True

The loop, for every generated token (read :meth:`FlashBack._decode` top to bottom):
1. at a retrieval point (every ``stride`` tokens, or only at the prompt with ``retrieve="once"``)
   retrieve with the last ``query_tokens`` tokens and build the passage block; a block equal to the
   one in place is kept where it is (``keep_unchanged``), so the cache simply grows;
2. if the context up to the next retrieval point would not fit the window, slide it (drop the oldest
   prefix tokens);
3. ask the logit source for the next-token logits of the *logical context* (``patterns.py``): a cached
   source keeps the longest prefix still valid and feeds the rest in one forward (for append that is the
   last ``stride`` tokens plus the new block; for prepend everything after the BOS), between retrieval
   points it feeds just the last token; the reference source (``use_cache=False``) recomputes all;
4. pick the token (greedy or sampled), never a marker; stop at EOS, a stop string, or the budget.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .api_checks import (as_passage, check_seed, engine_backend, engine_config, engine_retriever,  # noqa: F401
                         prompt_list, prompt_token_ids, retrieved, stop_strings)
from .config import FlashBackConfig
from .backends import Backend, SamplingSettings, TransformersBackend
from .errors import BackendError, ConfigError, RetrievalError
from .models import add_marker_tokens, marker_ids
from .patterns import build_block, encode_passage, keeps_block, logical_context, logical_positions
from .results import GenerationResult, RetrievalRecord, SlideRecord
from .retrievers.base import Passage, Retriever
from .sampling import RepetitionControls, Sampler, TextAssembler

log = logging.getLogger(__name__)

# A fast tokenizer keeps split_special_tokens as state on its shared Rust object, and encode_passage
# turns it on while prompts are encoded with it off: two threads encoding at once (one engine used by
# several threads, as the LlamaIndex / LangChain integrations allow) can get each other's setting and
# wrong ids. Encoding is cheap, so every encode in the engine takes this one lock.
_ENCODE_LOCK = threading.Lock()


def _with_fields(config: FlashBackConfig | None, fields: dict[str, Any]) -> FlashBackConfig | None:
    """``config`` (or the defaults) with the keyword fields a constructor was given; None when neither."""
    return (config or FlashBackConfig()).replace(**fields) if fields else config


def check_block_before(backend: Backend) -> None:
    """``block_positions="before"`` needs a backend that takes position ids and a rotary-position model."""
    from .models import relative_positions

    if not getattr(backend, "custom_positions", False):
        raise ConfigError(f"block_positions='before' needs position ids per token, which the {backend.name} "
                          "backend cannot take: use the transformers backend, or block_positions='after'")
    if not relative_positions(backend.model_type):
        raise ConfigError(f"block_positions='before' gives the block positions below 0, which a "
                          f"{backend.model_type} model (learned absolute positions) cannot read: use "
                          "block_positions='after'")


class TextStream:
    """Iterate to get text deltas as they are generated; ``.result`` holds the full result afterwards."""

    def __init__(self, events: Iterator[str]) -> None:
        self._events = events
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        self.result = yield from self._events


class FlashBack:
    """A causal LM, a retriever and a context pattern: generate with periodic re-retrieval."""

    def __init__(self, model, tokenizer, retriever: Retriever | None = None,
                 config: FlashBackConfig | None = None, *, backend: Backend | None = None) -> None:
        self.config = cfg = engine_config(config)                # a dict of fields is fine too
        retriever, backend = engine_retriever(retriever), engine_backend(backend)   # an index path is loaded
        if cfg.retrieves and retriever is None:
            raise ConfigError(f"pattern {cfg.pattern!r} needs a retriever (or use pattern='none')")
        if model is None and backend is None:
            raise ConfigError("FlashBack needs a model or a backend")
        self.model, self.tokenizer, self.retriever = model, tokenizer, retriever
        self.backend: Backend = backend if backend is not None else TransformersBackend(model)
        if cfg.layout_block_positions == "before":
            check_block_before(self.backend)
        # Markers are added to the vocabulary only when this engine uses them; their ids are looked up.
        # A vLLM backend serves a fixed vocabulary: there they must already be in it (flashback export).
        if not (cfg.retrieves and cfg.markers):
            self.markers = None
        elif model is not None:
            self.markers = add_marker_tokens(model, tokenizer, cfg.mark_left, cfg.mark_right)
        else:
            self.markers = marker_ids(tokenizer, cfg.mark_left, cfg.mark_right)
            if self.markers is None:
                raise ConfigError(
                    f"the {self.backend.name} backend's model has no marker tokens ({cfg.mark_left}, "
                    f"{cfg.mark_right}); serve a folder written by `flashback export`, which adds them, "
                    "or use markers=False")
        limits = [v for v in (self.backend.max_context, cfg.max_context) if v]
        self.max_context: int | None = min(limits) if limits else None
        # Tokens one window segment may add after the prefix: the block plus the tokens decoded
        # until the next retrieval point (one token at a time without retrieval).
        self._reserve = cfg.max_block_tokens + (cfg.stride if cfg.retrieves else 1)
        if self.max_context is not None and self._reserve + 1 > self.max_context:
            raise ConfigError(
                f"a passage block of up to {cfg.max_block_tokens} tokens (top_k x doc_tokens + markers) "
                f"plus a stride of {cfg.stride} does not fit a context window of {self.max_context} "
                "tokens; lower doc_tokens, top_k or stride")
        # Never generate a marker (training never predicts them) nor an id the tokenizer cannot decode.
        found = marker_ids(tokenizer, cfg.mark_left, cfg.mark_right)
        self._banned_ids = sorted(set(found.as_list() if found else []))
        self._vocab_size = len(tokenizer)
        self._passage_ids: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------ construction helpers
    @classmethod
    def from_pretrained(cls, model_name_or_path: str, retriever: Retriever | str | None = None,
                        config: FlashBackConfig | None = None, device: str | None = None,
                        dtype: str | torch.dtype | None = None, adapter: str | None = None, *,
                        backend: str = "transformers", server: str | None = None,
                        backend_options: dict[str, Any] | None = None,
                        device_map: str | dict[str, Any] | None = None, model_kwargs: dict[str, Any] | None = None,
                        tokenizer_kwargs: dict[str, Any] | None = None, **config_fields: Any) -> "FlashBack":
        """Load a model by alias, folder, .gguf or hub id; ``retriever`` may be an index folder path.

        ``adapter``: a folder from ``flashback train``; its settings (pattern, markers, stride, ...)
        are the default config, and ``config`` / keyword fields override them.
        ``device_map``: instead of ``device``, e.g. ``"auto"`` (see :func:`load_model`).
        ``backend``: ``"transformers"`` (default, in process), ``"vllm"`` (an in-process vLLM engine;
        ``backend_options`` are its ``AsyncEngineArgs``; a shipped model or adapter is exported for it
        once) or ``"vllm-server"`` with ``server=URL`` (same as :meth:`from_server`).
        ``device_map``, ``model_kwargs``, ``tokenizer_kwargs``: Hugging Face loading options for the
        transformers backend (see :func:`~flashback_rag.models.load_model`).
        """
        from .retrievers import load_index

        hf_options = {k: v for k, v in (("device_map", device_map), ("model_kwargs", model_kwargs),
                                        ("tokenizer_kwargs", tokenizer_kwargs)) if v}
        if hf_options and (backend != "transformers" or server is not None):
            raise ConfigError(f"{', '.join(hf_options)} are Hugging Face loading options of the transformers "
                              "backend; vLLM takes its own in backend_options (its AsyncEngineArgs)")
        if isinstance(retriever, str):
            retriever = load_index(retriever)
        if backend == "vllm-server" or server is not None:
            return cls.from_server(server, tokenizer=None, retriever=retriever, config=config,
                                   model=None, **(backend_options or {}), **config_fields)
        if backend == "vllm":
            from .backends.vllm_engine import VLLMEngineBackend
            from .serving import load_tokenizer, served_settings, vllm_folder

            folder = vllm_folder(model_name_or_path, adapter)
            options = dict(backend_options or {})
            if dtype is not None:
                options.setdefault("dtype", str(dtype).replace("torch.", ""))
            engine = VLLMEngineBackend(str(folder), **options)
            config = _with_fields(config or served_settings(folder), config_fields)
            return cls(None, load_tokenizer(None, folder), retriever, config, backend=engine)
        if backend != "transformers":
            raise ConfigError(f"unknown backend {backend!r}; choose transformers, vllm or vllm-server")
        from .models import load_model

        from .serving import served_settings

        model, tokenizer = load_model(model_name_or_path, device=device, dtype=dtype, adapter=adapter, **hf_options)
        if config is None:
            config = getattr(model, "flashback_config", None)
        if config is None and adapter is None:          # a merged or fully tuned model folder
            config = served_settings(model_name_or_path)
        return cls(model, tokenizer, retriever, _with_fields(config, config_fields))

    @classmethod
    def from_server(cls, url: str, tokenizer: Any = None, retriever: Retriever | str | None = None,
                    config: FlashBackConfig | None = None, *, model: str | None = None,
                    timeout: float = 120.0, api_key: str | None = None, **config_fields: Any) -> "FlashBack":
        """Drive a running ``vllm serve`` at ``url`` (``http://HOST:PORT/v1``) with token-id prompts.

        ``tokenizer``: the served model's (object, folder or hub id); by default the folder the server
        loaded, when it is on this machine. Settings come from that folder's ``flashback.json`` (what
        ``flashback export`` writes) unless ``config`` / keyword fields say otherwise. ``timeout``: the
        most seconds one request may take in all (a server that stalls, or trickles keep-alives, fails
        then with one :class:`BackendError`).
        """
        from .retrievers import load_index
        from .serving import server_parts

        backend, tokenizer, recorded = server_parts(url, tokenizer, model, timeout, api_key)
        config = _with_fields(config or recorded, config_fields)
        if isinstance(retriever, str):
            retriever = load_index(retriever)
        return cls(None, tokenizer, retriever, config, backend=backend)

    def __repr__(self) -> str:
        c = self.config
        return (f"FlashBack(model={self.backend.model_type}, backend={self.backend.name}, pattern={c.pattern}, markers={c.markers}, "
                f"stride={c.stride}, query_tokens={c.query_tokens}, doc_tokens={c.doc_tokens}, top_k={c.top_k}, "
                f"echo_tokens={c.echo_tokens}, block_positions={c.block_positions})")

    # ------------------------------------------------------------------------ public API
    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 128, *,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 stop: Sequence[str] | str | None = None, ignore_eos: bool = False,
                 use_cache: bool = True, output_scores: bool = False, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0, stop_token_ids: Sequence[int] | None = None) -> GenerationResult:
        """Generate a continuation of ``prompt`` (text, or token ids). Greedy unless temperature > 0.

        ``use_cache=False`` is the reference mode: it recomputes the whole logical context at every
        token and must give the same tokens as the cached loop. ``output_scores=True`` keeps each step's
        next-token logits (float32, on the CPU) in ``result.scores``. ``repetition_penalty`` and
        ``no_repeat_ngram_size`` mean what they mean in Hugging Face ``generate`` (over the running text,
        not the passages). ``stop_token_ids``: token ids that end the text like EOS does (HuggingFaceLLM's
        ``stopping_ids``); the stop token is not part of the result.
        """
        events = self._decode(prompt, max_new_tokens, temperature, top_p, top_k, seed, stop,
                              ignore_eos, use_cache, want_text=bool(stop), output_scores=output_scores,
                              controls=RepetitionControls(repetition_penalty, no_repeat_ngram_size),
                              stop_token_ids=stop_token_ids)
        while True:
            try:
                next(events)
            except StopIteration as done:
                return done.value

    def score(self, prompt: str | Sequence[int], continuation: str | Sequence[int], *,
              use_cache: bool = True) -> GenerationResult:
        """Read a given ``continuation`` of ``prompt`` through the loop: retrieval points, blocks kept or
        placed, window slides and cache exactly as generation would have them had the model produced this
        text, and each token's loss under that layout in ``result.token_nll`` (``result.perplexity``).

        It is the decoding loop's own perplexity of a reference text (the layout is ``patterns``'s, so it
        equals the evaluation code's on the same points), and a fair timing: every pattern reads the
        same text and so retrieves the same passages. Markers are never predicted (their logits are
        masked, as in training). The transformers backend only.
        """
        forced = self._continuation_ids(continuation)
        events = self._decode(prompt, len(forced), 0.0, 1.0, 0, None, None, True, use_cache, want_text=False,
                              forced=forced)
        while True:
            try:
                next(events)
            except StopIteration as done:
                return done.value

    def _continuation_ids(self, continuation: str | Sequence[int]) -> list[int]:
        if isinstance(continuation, str):
            if not continuation:
                raise ConfigError("the continuation to score is empty")
            with _ENCODE_LOCK:
                return self._without_markers(continuation, self.tokenizer(continuation, add_special_tokens=False).input_ids)
        ids = prompt_token_ids(continuation, self._vocab_size)     # integers inside the vocabulary
        if not ids:
            raise ConfigError("the continuation to score is empty")
        forged = sorted(set(ids) & set(self._banned_ids))
        if forged:
            raise ConfigError(f"the continuation holds marker id(s) {forged}; markers are never predicted")
        return ids

    def stream(self, prompt: str | Sequence[int], max_new_tokens: int = 128, *,
               temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
               stop: Sequence[str] | str | None = None, ignore_eos: bool = False,
               use_cache: bool = True, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
               stop_token_ids: Sequence[int] | None = None) -> TextStream:
        """Like :meth:`generate`, but iterate over the text as it is produced."""
        controls = RepetitionControls(repetition_penalty, no_repeat_ngram_size)   # bad values fail now
        return TextStream(self._decode(prompt, max_new_tokens, temperature, top_p, top_k, seed, stop,
                                       ignore_eos, use_cache, want_text=True, controls=controls,
                                       stop_token_ids=stop_token_ids))

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int = 128, *,
                       max_concurrency: int = 64, **kwargs: Any) -> list[GenerationResult]:
        """:meth:`generate` for every prompt, results in order. On a vLLM backend every sequence is in
        flight at once (up to ``max_concurrency``), each re-retrieving on its own schedule, and vLLM
        batches their requests; on transformers they run one after another."""
        prompts = prompt_list(prompts)                      # never one string taken letter by letter
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        if not self.backend.concurrent or len(prompts) <= 1:
            return [self.generate(p, max_new_tokens, **kwargs) for p in prompts]
        from concurrent.futures import ThreadPoolExecutor

        def one(context: contextvars.Context, prompt):
            # the caller's context goes along (framework callbacks live in context variables); each
            # sequence needs its own copy, since a context can be entered by one thread at a time
            return context.run(self.generate, prompt, max_new_tokens, **kwargs)

        with ThreadPoolExecutor(max_workers=min(len(prompts), max_concurrency),
                                thread_name_prefix="flashback-seq") as pool:
            return list(pool.map(one, [contextvars.copy_context() for _ in prompts], prompts))

    async def agenerate(self, prompt: str | Sequence[int], max_new_tokens: int = 128,
                        **kwargs: Any) -> GenerationResult:
        """:meth:`generate` without blocking the event loop (it runs in a worker thread)."""
        return await self._in_thread(self.generate, prompt, max_new_tokens, **kwargs)

    async def agenerate_batch(self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int = 128,
                              **kwargs: Any) -> list[GenerationResult]:
        """:meth:`generate_batch` without blocking the event loop."""
        return await self._in_thread(self.generate_batch, prompts, max_new_tokens, **kwargs)

    async def _in_thread(self, fn, *args, **kwargs):
        """Run ``fn`` in a worker thread with the caller's context. A concurrent backend gets the engine's
        own pool of 64 threads: the event loop's default pool (CPUs + 4 threads) would cap how many
        gathered calls are in flight at once."""
        import asyncio
        import functools

        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._async_pool() if self.backend.concurrent else None, call)

    def _async_pool(self):
        from concurrent.futures import ThreadPoolExecutor

        with self._lock:
            if getattr(self, "_pool", None) is None:
                self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="flashback-async")
            return self._pool

    def encode_prompt(self, prompt: str | Sequence[int]) -> tuple[list[int], int]:
        """Prompt token ids and the number of leading special tokens (a BOS) that anchor the context.

        Only the engine places markers: a prompt that contains the marker strings (a chat user, a
        document fed to a chain) gets them as ordinary text tokens, never as the marker ids, so nobody
        who writes into a prompt can forge a passage block. Other special tokens in the text (a chat
        template's turn markers) keep their meaning.
        """
        bos = self.tokenizer.bos_token_id
        if not isinstance(prompt, str):
            ids = prompt_token_ids(prompt, self._vocab_size)     # integers inside the vocabulary
            forged = sorted(set(ids) & set(self._banned_ids))
            if forged:
                raise ConfigError(f"the prompt's token ids contain marker id(s) {forged}; only the engine "
                                  "places markers")
            return ids, int(bool(ids) and bos is not None and ids[0] == bos)
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as err:   # lone surrogates (undecodable bytes from a terminal or file)
            raise ConfigError(f"the prompt is not valid Unicode text at character {err.start}") from None
        with _ENCODE_LOCK:
            with_special = self.tokenizer(prompt).input_ids
            plain = self.tokenizer(prompt, add_special_tokens=False).input_ids
            safe = self._without_markers(prompt, plain)
        lead = len(with_special) - len(plain)
        if lead > 0 and with_special[lead:] == plain:
            return list(with_special[:lead]) + safe, lead
        return safe, 0

    def _without_markers(self, text: str, ids: list[int]) -> list[int]:
        """``ids`` (text encoded as usual) with every marker string encoded as plain text instead."""
        marks = (self.config.mark_left, self.config.mark_right)
        if not self._banned_ids or not set(ids) & set(self._banned_ids):
            return list(ids)
        out: list[int] = []
        for piece in re.split("(" + "|".join(map(re.escape, marks)) + ")", text):
            if not piece:
                continue
            if piece in marks:
                out += encode_passage(self.tokenizer, Passage(id="", text=piece), len(piece) + 8, "{text}")
            else:
                out += self.tokenizer(piece, add_special_tokens=False).input_ids
        return out

    # ------------------------------------------------------------------------ the loop
    def _decode(self, prompt, max_new_tokens, temperature, top_p, top_k, seed, stop, ignore_eos,
                use_cache, want_text, output_scores=False, controls: RepetitionControls | None = None,
                forced: Sequence[int] = (), stop_token_ids: Sequence[int] | None = None) -> Iterator[str]:
        cfg = self.config
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        stop_ids = self._stop_ids(stop_token_ids)
        stops = stop_strings(stop)
        controls = controls or RepetitionControls()
        check_seed(seed)
        Sampler(temperature, top_p, top_k, seed)            # bad sampling values fail before any work
        tokens, anchor = self.encode_prompt(prompt)
        if not tokens:
            raise ConfigError("the prompt is empty and the tokenizer has no BOS token to start from")
        result = GenerationResult(text="", token_ids=[], finish_reason="length", pattern=cfg.pattern)
        stats = result.stats
        stats.prompt_tokens = len(tokens)
        eos = None if ignore_eos else self.tokenizer.eos_token_id
        sampling = SamplingSettings(
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, eos_id=eos,
            banned_ids=tuple(self._banned_ids), vocab_size=self._vocab_size,
            repetition_penalty=controls.penalty, no_repeat_ngram_size=controls.n, output_scores=output_scores,
            forced_ids=tuple(forced))
        # The longest logical context this call can reach: a cache can allocate that much once.
        longest = len(tokens) + max_new_tokens + cfg.max_block_tokens
        session = self.backend.session(result, sampling, use_cache=use_cache,
                                       capacity=min(longest, self.max_context or longest))
        text = TextAssembler(self.tokenizer, stops) if want_text else None
        window, point, block = anchor, len(tokens), []      # tokens[anchor:window] slid out
        step, done = 0, False
        started = time.perf_counter()

        try:
            # One segment per pass: up to the next retrieval point (every `stride` tokens), or, without
            # retrieval, as far as the window allows.
            while step < max_new_tokens and not done:
                n, left = len(tokens), max_new_tokens - step
                # 1. retrieval point (every `stride` tokens; with retrieve="once" only the first): query =
                #    last query_tokens tokens -> passage block. A block equal to the one in place is kept
                #    where it is (append): the point it belongs to stays, nothing is cropped or re-fed.
                fresh = cfg.periodic or (cfg.retrieves and step == 0)
                if fresh:
                    found = self._retrieve(tokens, anchor, step, result)
                    record = result.retrievals[-1]
                    record.changed = found != block
                    stats.blocks_changed += record.changed
                    if keeps_block(found, block, cfg.keep_unchanged and cfg.pattern == "append"):
                        record.kept = True
                    else:
                        point, block = n, found
                ahead = min(cfg.stride, left) if cfg.periodic else left
                # 2. slide the window if the context until the segment's last token would not fit
                if self.max_context is not None:
                    added = len(block) + (cfg.layout_echo if block else 0)    # the echo goes with the block
                    start = self._slide_start(n, ahead if cfg.periodic else 1, anchor, added, window)
                    if start != window:
                        result.slides.append(SlideRecord(step, start, start - window))
                        window = start
                        # the whole context is recomputed anyway: the block (kept or not) starts again here
                        point = n
                        if fresh:
                            record.kept = False
                    if not cfg.periodic:       # no re-retrieval: run until the window is full, then slide
                        ahead = min(left, self.max_context - anchor - added - n + max(anchor, window) + 1)
                # 3. the backend continues the logical context; the loop keeps the running text
                context = logical_context(cfg.pattern, tokens, point, block, anchor, window, cfg.echo_tokens)
                positions = logical_positions(cfg.pattern, tokens, point, block, anchor, window, cfg.echo_tokens,
                                              cfg.block_positions)
                produced = 0
                # Position ids go only to a backend that takes them (the constructor checked): the others
                # keep the three-argument segment() of the Session protocol.
                extra = () if positions is None else (positions,)
                for token in session.segment(context, ahead, tokens, *extra):
                    produced += 1
                    step += 1
                    if token == eos or token in stop_ids:
                        result.finish_reason, done = ("eos" if token == eos else "stop"), True
                        break
                    tokens.append(token)
                    result.token_ids.append(token)
                    if text is not None:
                        delta = text.push(token)
                        if delta:
                            yield delta
                        if text.stopped:
                            result.finish_reason, done = "stop", True
                            break
                if not done and produced < ahead:
                    raise BackendError(f"the {self.backend.name} backend returned {produced} of the {ahead} "
                                       "tokens asked for, without an end-of-text token")
        finally:
            session.close()

        if text is not None:
            tail = text.finish()
            if tail:
                yield tail
            result.text = text.final_text
        else:
            result.text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        stats.generated_tokens = len(result.token_ids)
        stats.total_seconds = time.perf_counter() - started
        return result

    def _stop_ids(self, stop_token_ids: Sequence[int] | None) -> frozenset[int]:
        """Checked stop token ids: ints the tokenizer knows."""
        ids = [] if stop_token_ids is None else list(stop_token_ids)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self._vocab_size]
        if bad:
            raise ConfigError(f"stop_token_ids must be token ids of this tokenizer (0..{self._vocab_size - 1}), "
                              f"got {bad}")
        return frozenset(ids)

    def _slide_start(self, n: int, ahead: int, anchor: int, block_len: int, window: int) -> int:
        """Window start so that the context stays within max_context until the next check point.

        The last step of the segment reads anchor + (n + ahead - 1 - start) + block_len tokens. When
        that is too many, drop a quarter of the free room more than needed, so the window slides (and
        the cache is recomputed) rarely, not at every retrieval.
        """
        start = max(anchor, window)
        needed = anchor + (n + ahead - 1 - start) + block_len
        if needed <= self.max_context:
            return window
        margin = max(0, (self.max_context - anchor - self._reserve) // 4)
        return min(n - 1, start + (needed - self.max_context) + margin)

    def _retrieve(self, tokens: list[int], anchor: int, step: int, result: GenerationResult) -> list[int]:
        """Retrieve for the current prefix and return the passage block (token ids)."""
        cfg = self.config
        started = time.perf_counter()
        query = self.tokenizer.decode(tokens[max(anchor, len(tokens) - cfg.query_tokens):],
                                      skip_special_tokens=True)
        passages: list[Passage] = []
        error = None
        if query.strip():
            try:
                passages = self._call_retriever(query)
            except Exception as err:   # a failing retriever must not kill a long generation
                if cfg.strict:
                    raise RetrievalError(f"retriever failed at step {step}: {err}") from err
                error = f"{type(err).__name__}: {err}"
                message = f"retrieval failed at step {step}, continuing without a passage: {error}"
                log.warning(message)
                result.warnings.append(message)
        block = build_block([self._passage_tokens(p) for p in passages], self.markers)
        seconds = time.perf_counter() - started
        result.retrievals.append(RetrievalRecord(step=step, position=len(tokens), query=query,
                                                 passages=passages, block_tokens=len(block),
                                                 seconds=seconds, error=error))
        result.stats.retrievals += 1
        result.stats.retrieval_seconds += seconds
        return block

    def _call_retriever(self, query: str) -> list[Passage]:
        """At most ``top_k`` passages, within ``retrieval_timeout`` seconds when one is set.

        Results are taken lazily (a retriever may return a generator that never ends). A retriever that
        does not answer in time is left running in a daemon thread: Python cannot stop it, but the
        generation goes on without it.
        """
        k, timeout = self.config.top_k, self.config.retrieval_timeout

        def run() -> list[Passage]:
            return retrieved(self.retriever.retrieve(query, k), k)     # checked: a bare str is no list

        if timeout is None:
            return run()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["passages"] = run()
            except BaseException as err:      # handed to the generating thread
                box["error"] = err

        # The caller's context goes along (framework callbacks and hand-overs live in context variables).
        worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True,
                                  name="flashback-retrieve")
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise TimeoutError(f"the retriever did not answer within {timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["passages"]

    def _passage_tokens(self, passage: Passage) -> list[int]:
        """Passage token ids, memoised: the same passage often comes back stride after stride."""
        key = (passage.id, passage.text)
        with self._lock:
            ids = self._passage_ids.get(key)
            if ids is not None:
                self._passage_ids.move_to_end(key)
                return ids
        with _ENCODE_LOCK:
            ids = encode_passage(self.tokenizer, passage, self.config.doc_tokens, self.config.passage_template)
        with self._lock:
            self._passage_ids[key] = ids
            while len(self._passage_ids) > 4096:
                self._passage_ids.popitem(last=False)
        return ids
