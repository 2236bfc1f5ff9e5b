"""What the LlamaIndex and LangChain integrations share, so both packages stay thin.

- :func:`build_engine`: one constructor for both ``FlashBackLLM`` classes (``model``, ``adapter``,
  ``retriever``, ``config`` or its fields as keywords, or ``server`` for a running ``vllm serve``);
- :func:`recorded_source`: what an integration records about its engine (model, server, tokenizer)
  so that ``to_dict`` / ``from_dict`` rebuild the same kind of engine;
- :func:`with_first_block`: a per-call view of an engine whose first passage block is given (the
  nodes a query engine already retrieved) and whose later blocks come from its own retriever;
- :func:`aiter_in_thread`: async streaming that keeps a whole generation in one thread;
- :func:`call_settings`: per-call options (Hugging Face names accepted, unknown names refused);
- :func:`refuse_foreign_retriever`: the other framework's retriever, refused with the right adapter;
- :func:`report_slides`: one warning per call when the context window slid.

    >>> from flashback_rag.frameworks import build_engine, with_first_block
    >>> from flashback_rag.retrievers import BM25Retriever, Passage
    >>> fb = build_engine("tiny-random-llama", retriever=BM25Retriever.build(["pets purr"]), stride=4)
    >>> fb.config.stride
    4
    >>> first = [Passage(id="q1", text="dogs bark"), Passage(id="q2", text="cows moo")]
    >>> result = with_first_block(fb, first).generate("pets", max_new_tokens=8, ignore_eos=True)
    >>> [r.passage_ids for r in result.retrievals]
    [['q1', 'q2'], ['0']]

Thread safety: a generation keeps all its state (KV cache, sampler, text) in the call, so one engine
serves several threads or async tasks at once; they share the model (read-only forwards) and the
tokenizer, whose encodes the engine serialises.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import difflib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar

from .config import FlashBackConfig, config_fields
from .decoding import FlashBack
from .errors import ConfigError
from .results import GenerationResult
from .retrievers.base import Passage
from .usage import TokenUsage

log = logging.getLogger(__name__)
T = TypeVar("T")


def split_config_fields(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword arguments into FlashBackConfig fields and the rest."""
    names = set(config_fields())
    fields = {k: v for k, v in kwargs.items() if k in names}
    return fields, {k: v for k, v in kwargs.items() if k not in names}


def resolve_config(config: FlashBackConfig | dict[str, Any] | None = None,
                   **fields: Any) -> FlashBackConfig:
    """A FlashBackConfig from a config, a dict of its fields, and/or field keywords (which win)."""
    if isinstance(config, dict):
        config = FlashBackConfig.from_dict(config)
    elif config is not None and not isinstance(config, FlashBackConfig):
        raise ConfigError(f"config must be a FlashBackConfig or a dict, got {type(config).__name__}")
    unknown = sorted(set(fields) - set(config_fields()))
    if unknown:
        raise ConfigError(f"unknown FlashBackConfig field(s): {', '.join(unknown)}")
    if fields:
        return (config or FlashBackConfig()).replace(**fields)
    return config or FlashBackConfig()


def build_engine(model: Any, *, adapter: str | os.PathLike | None = None, retriever: Any = None,
                 config: FlashBackConfig | dict[str, Any] | None = None, device: str | int | None = None,
                 dtype: str | None = None, server: str | None = None, tokenizer: Any = None,
                 device_map: str | dict[str, Any] | None = None, model_kwargs: dict[str, Any] | None = None,
                 tokenizer_kwargs: dict[str, Any] | None = None, **config_fields: Any) -> FlashBack:
    """The engine behind a ``FlashBackLLM``.

    model:     an alias, folder, .gguf file or hub id; or a ready :class:`FlashBack` (shared as is
               unless ``retriever`` or settings are given); or a ``(model, tokenizer)`` pair.
    adapter:   a FlashBack adapter folder, loaded onto a model given by name.
    retriever: a flashback-rag retriever or an index folder path (framework retrievers are wrapped by
               the integration packages before they get here).
    server:    the URL (``http://HOST:PORT/v1``) of a running ``vllm serve`` to drive instead of a
               model in this process (:meth:`FlashBack.from_server`); ``model`` is then the served
               model's name (default: the server's first) and ``tokenizer`` its tokenizer (a folder or
               hub id), needed only when the folder the server loaded is not on this machine.
    device, dtype, device_map, model_kwargs, tokenizer_kwargs: how a model given by name is loaded
               (:func:`~flashback_rag.models.load_model`); refused for a model that is already loaded.
    """
    if isinstance(retriever, (str, os.PathLike)):
        from .retrievers import load_index

        retriever = load_index(retriever)
    loading = {k: v for k, v in (("device", device), ("dtype", dtype), ("device_map", device_map),
                                 ("model_kwargs", model_kwargs), ("tokenizer_kwargs", tokenizer_kwargs))
               if v not in (None, {}, [])}
    if server is not None:
        return _served_engine(server, model, tokenizer, adapter, retriever, config, loading, config_fields)
    if tokenizer is not None:
        raise ConfigError("tokenizer= goes with server= (the served model's tokenizer); a model loaded "
                          "here brings its own")
    if loading and not isinstance(model, (str, os.PathLike)):
        what = "FlashBack engine" if isinstance(model, FlashBack) else "(model, tokenizer) pair"
        raise ConfigError(f"{', '.join(loading)} say how to load a model given by name or path; this "
                          f"{what} is loaded already (pass them where you load it)")
    if isinstance(model, FlashBack):
        if adapter is not None:
            raise ConfigError("adapter= applies when model is a name or path; this FlashBack engine "
                              "already holds its model (load the adapter when you build it)")
        if retriever is None and config is None and not config_fields:
            return model
        cfg = resolve_config(config if config is not None else model.config, **config_fields)
        return FlashBack(model.model, model.tokenizer,        # the same backend: a served one stays served
                         retriever if retriever is not None else model.retriever, cfg, backend=model.backend)
    if isinstance(model, tuple) and len(model) == 2:
        if adapter is not None:
            raise ConfigError("adapter= applies when model is a name or path, not a (model, tokenizer) pair")
        # a FlashBack model (an adapter-carrying one) brings its recorded settings as the defaults
        recorded = config if config is not None else getattr(model[0], "flashback_config", None)
        return FlashBack(model[0], model[1], retriever, resolve_config(recorded, **config_fields))
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError("model must be a name or path, a FlashBack engine or a (model, tokenizer) pair, "
                          f"got {type(model).__name__}")
    resolve_config(config, **config_fields)            # fail on a bad setting before loading a model
    if isinstance(config, dict):
        config = FlashBackConfig.from_dict(config)
    # config and fields go through as given, so an adapter's recorded settings stay the defaults.
    return FlashBack.from_pretrained(str(model), retriever=retriever, config=config,
                                     adapter=None if adapter is None else str(adapter), **loading,
                                     **config_fields)


def _served_engine(server: str, model: Any, tokenizer: Any, adapter: Any, retriever: Any, config: Any,
                   loading: dict[str, Any], fields: dict[str, Any]) -> FlashBack:
    """``build_engine`` for ``server=``: the model is the server's, so only its name may be given."""
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"with server= the model is the one the server loaded: model= is its served name "
                          f"(or leave it out), not a {type(model).__name__}")
    if adapter is not None:
        raise ConfigError("adapter= cannot be loaded onto a served model: merge it into a folder with "
                          "`flashback export --model MODEL --adapter ADAPTER --out FOLDER` and serve that folder")
    if loading:
        raise ConfigError(f"{', '.join(loading)} belong to the server with server=: set them on `vllm serve` "
                          "(--dtype, --device, --tensor-parallel-size ...)")
    resolve_config(config, **fields)                    # a bad setting fails before any request
    if isinstance(config, dict):
        config = FlashBackConfig.from_dict(config)
    # None config: the served folder's flashback.json (what `flashback export` writes) gives the settings
    return FlashBack.from_server(server, tokenizer=tokenizer, retriever=retriever, config=config,
                                 model=model, **fields)


def recorded_source(model: Any, engine: FlashBack, tokenizer: Any = None) -> dict[str, str | None]:
    """``model``, ``server`` and ``tokenizer`` as an integration records them for ``engine``.

    ``from_dict`` rebuilds from these: a name or path for a model in this process, or the served
    model's name, the server's URL and (when known) the tokenizer's folder for an engine that drives a
    ``vllm serve``. An engine or model object given as ``model`` is recorded by its name or path.

        >>> from flashback_rag.frameworks import build_engine, recorded_source
        >>> fb = build_engine("tiny-random-llama", pattern="none")
        >>> recorded_source("tiny-random-llama", fb)
        {'model': 'tiny-random-llama', 'server': None, 'tokenizer': None}
    """
    backend = engine.backend
    server = getattr(backend, "base_url", None) if backend.name == "vllm-server" else None
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
    elif engine.model is None:            # a vLLM backend: the served name, or the folder it loaded
        name = str(getattr(backend, "model", "") or backend.model_type)
    else:
        name = getattr(engine.model.config, "name_or_path", "") or engine.model.config.model_type
    if server is None:
        tokenizer = None
    elif not isinstance(tokenizer, (str, os.PathLike)):    # where the engine's tokenizer came from
        tokenizer = getattr(engine.tokenizer, "name_or_path", None) or None
    return {"model": name, "server": server, "tokenizer": None if tokenizer is None else str(tokenizer)}


class FirstBlockRetriever:
    """For one generation: the given passages at the first retrieval, then ``then``'s results."""

    def __init__(self, passages: Sequence[Passage], then: Any = None, k: int = 1) -> None:
        self.passages, self.then, self.k = list(passages), then, k
        self._served = False

    def retrieve(self, query: str, k: int) -> list[Passage]:
        if not self._served:
            self._served = True
            return list(self.passages)
        # k from the engine is the widened first-block count; later blocks keep the configured top_k
        return list(self.then.retrieve(query, self.k)) if self.then is not None else []


def with_first_block(engine: FlashBack, passages: Sequence[Passage]) -> FlashBack:
    """A per-call copy of ``engine`` whose first passage block is ``passages`` (all of them).

    The copy shares the model, tokenizer and passage memo; only its retriever and ``top_k`` differ,
    so it is cheap and safe to make for every call. Each passage is truncated to ``doc_tokens`` like
    any other; passages that could not fit the context window with a stride after them are dropped.
    """
    cfg = engine.config
    passages = list(passages)
    if not cfg.retrieves:
        raise ConfigError("handing retrieved nodes to FlashBack needs pattern 'append' or 'prepend', "
                          "not 'none'")
    if engine.max_context is not None:
        room = (engine.max_context - cfg.stride - 2 - 16) // cfg.doc_tokens   # 16: a minimal prompt
        if len(passages) > max(room, cfg.top_k):
            log.warning("only %d of %d handed-over passages fit the context window", max(room, cfg.top_k),
                        len(passages))
            passages = passages[:max(room, cfg.top_k)]
    call = copy.copy(engine)
    call.config = cfg.replace(top_k=max(cfg.top_k, len(passages)))
    call.retriever = FirstBlockRetriever(passages, engine.retriever, cfg.top_k)
    return call


def result_summary(result: GenerationResult, config: FlashBackConfig | None = None) -> dict[str, Any]:
    """JSON-friendly facts about a generation (finish reason, retrievals, window slides, warnings,
    time; with ``config``, its token usage) for framework metadata."""
    usage = {} if config is None else {"token_usage": TokenUsage.of(result, config).openai()}
    return {
        "finish_reason": result.finish_reason,
        "generated_tokens": result.stats.generated_tokens,
        "retrievals": [{"step": r.step, "query": r.query, "passage_ids": r.passage_ids,
                        "titles": [p.title for p in r.passages], "error": r.error}
                       for r in result.retrievals],
        "slides": [{"step": s.step, "window_start": s.window_start, "dropped_tokens": s.dropped_tokens}
                   for s in result.slides],
        "warnings": list(result.warnings),
        "seconds": result.stats.total_seconds,
        **usage,
    }


def report_slides(result: GenerationResult, window: int | None) -> None:
    """Warn once for this call when the context window slid (the oldest prompt tokens were dropped).

    A framework user rarely reads ``result.slides``; a prompt that silently lost its beginning is the
    kind of mistake that should be said out loud.
    """
    if result.slides:
        dropped = sum(s.dropped_tokens for s in result.slides)
        log.warning("the prompt and the generated text passed the context window (%s tokens): the oldest %d "
                    "tokens were dropped (%d slide%s); shorten the prompt or lower max_new_tokens",
                    window or "?", dropped, len(result.slides), "" if len(result.slides) == 1 else "s")


# Per-call options: the engine's names, and the Hugging Face generate names users bring from
# HuggingFaceLLM / HuggingFacePipeline (inside generate_kwargs; pipeline_kwargs is HuggingFacePipeline's
# name for it). sample_top_k is the engine's top_k: in the integrations top_k belongs to FlashBackConfig
# (passages per retrieval).
CALL_OPTIONS = ("max_new_tokens", "temperature", "top_p", "sample_top_k", "seed", "stop", "ignore_eos",
                "use_cache", "repetition_penalty", "no_repeat_ngram_size", "generate_kwargs", "pipeline_kwargs")
_HF_NAMES = {"max_new_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p",
             "top_k": "top_k", "seed": "seed", "stop": "stop", "stop_strings": "stop",
             "ignore_eos": "ignore_eos", "repetition_penalty": "repetition_penalty",
             "no_repeat_ngram_size": "no_repeat_ngram_size", "do_sample": "do_sample",
             "return_full_text": "return_full_text"}

# Hugging Face names (HuggingFaceLLM, HuggingFacePipeline, ChatHuggingFace, from_pretrained, generate) that
# are spelt differently here or do not apply: name -> (the keyword to use or None, why). A keyword check
# says this instead of guessing from the spelling (max_length used to suggest mark_left, task tags).
HF_EQUIVALENTS: dict[str, tuple[str | None, str]] = {
    "max_length": ("max_new_tokens", "Hugging Face's max_length counts the prompt too; the window is "
                                     "max_context, or context_window on LlamaIndex"),
    "max_tokens": ("max_new_tokens", "tokens to generate"),
    "num_output": ("max_new_tokens", "LlamaIndex's num_output is max_new_tokens here"),
    "task": (None, "FlashBack generates text with a causal LM (the pipeline task 'text-generation'); leave "
                   "it out"),
    "tokenizer_name": (None, "the tokenizer is the model's own; tokenizer_kwargs= passes options to it, "
                             "tokenizer= names a served model's"),
    "tokenizer_outputs_to_remove": (None, "FlashBack feeds the model token ids only"),
    "batch_size": (None, "sequences run one at a time on transformers; on a vllm serve (server=) batch() "
                         "keeps every prompt in flight"),
    "pipeline": ("model", "pass the pipeline's model and tokenizer: model=(pipe.model, pipe.tokenizer)"),
    "backend": (None, "HuggingFacePipeline's openvino / ipex back-ends do not apply; FlashBack runs on "
                      "transformers here or on a vllm serve (server=)"),
    "num_beams": (None, "FlashBack decodes greedily or samples (temperature, top_p, sample_top_k), no beams"),
    "eos_token_id": ("stopping_ids", "more token ids to stop at (the model's EOS stays)"),
}


def check_keywords(given: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Refuse unknown keyword names (a misspelt ``strid=16`` must not be silently ignored).

    A Hugging Face name that is spelt differently here gets the right one (:data:`HF_EQUIVALENTS`), the
    rest the closest allowed name.
    """
    allowed = list(allowed)
    unknown = [k for k in given if k not in allowed]
    if unknown:
        hints = []
        for name in unknown:
            if name in HF_EQUIVALENTS:
                use, why = HF_EQUIVALENTS[name]
                said = ("not applicable: " if use is None else f"did you mean {use!r}? " if use in allowed
                        else f"give {use}= to the LLM instead: ")
                hints.append(f"{name!r} ({said}{why})")
                continue
            close = difflib.get_close_matches(name, allowed, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"{where} got unknown keyword argument(s) {', '.join(hints)}; it takes: "
                        f"{', '.join(sorted(allowed))}")


def from_generate_kwargs(options: dict[str, Any] | None, where: str = "generate_kwargs") -> dict[str, Any]:
    """Hugging Face ``generate`` options as FlashBack.generate keywords."""
    if not options:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"{where} must be a dict, got {type(options).__name__}")
    check_keywords(options, _HF_NAMES, where)
    out = {_HF_NAMES[k]: v for k, v in options.items()}
    if out.pop("return_full_text", False):
        raise ConfigError(f"{where}: return_full_text=True is not supported: FlashBack returns the new text only")
    do_sample = out.pop("do_sample", None)
    if do_sample is False:
        out["temperature"] = 0.0
    elif do_sample and not out.get("temperature"):
        out["temperature"] = 1.0            # generate's default temperature when sampling
    return out


def call_settings(defaults: dict[str, Any], generate_kwargs: dict[str, Any] | None, kwargs: dict[str, Any],
                  where: str) -> dict[str, Any]:
    """FlashBack.generate keywords for one call: the LLM's settings, then its ``generate_kwargs``, then
    the call's ``generate_kwargs``, then the call's own keywords (each overriding the one before)."""
    check_keywords(kwargs, CALL_OPTIONS, where)
    settings = dict(defaults)
    settings.update(from_generate_kwargs(generate_kwargs))
    for name in ("pipeline_kwargs", "generate_kwargs"):        # HuggingFacePipeline's name, then ours
        settings.update(from_generate_kwargs(kwargs.get(name), f"{where}: {name}"))
    for key, value in kwargs.items():
        if key not in ("generate_kwargs", "pipeline_kwargs"):
            settings["top_k" if key == "sample_top_k" else key] = value
    return settings


_FRAMEWORKS = {"llama_index": ("LlamaIndex", "llama_index.llms.flashback.FlashBackLLM"),
               "langchain": ("LangChain", "langchain_flashback.FlashBackLLM")}


def framework_of(obj: Any) -> str | None:
    """``"llama_index"`` or ``"langchain"`` when ``obj``'s class derives from that framework's classes.

    flashback's own classes are judged by what they derive from: ``llama_index.llms.flashback.FlashBackRetriever``
    is a LlamaIndex retriever (and unusable as a flashback-rag one), while the plain adapters
    (``LlamaIndexPassageRetriever``, ``LangChainPassageRetriever``) are flashback-rag retrievers of no framework.
    """
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        if module.startswith(("llama_index.llms.flashback", "langchain_flashback")):
            continue
        for root in _FRAMEWORKS:
            if module == root or module.startswith(root + ".") or module.startswith(root + "_"):
                return root
    return None


# What a flashback adapter of one framework wraps, so the refusal can name the way out.
_WRAPPED = {"llama_index": "flashback_retriever", "langchain": "retriever"}


def refuse_foreign_retriever(obj: Any, framework: str) -> None:
    """Refuse, at construction, a retriever of the other framework (it would fail at every retrieval).

    Both integrations name their adapter ``FlashBackRetriever``, so the message names the class with its
    module and the package that takes it.
    """
    found = framework_of(obj)
    if found is None or found == framework:
        return
    name, llm = _FRAMEWORKS[found]
    cls = type(obj)
    inner = ""
    if cls.__module__.startswith(("llama_index.llms.flashback", "langchain_flashback")):
        inner = f", or pass the flashback-rag retriever it wraps (.{_WRAPPED[found]})"
    raise ConfigError(f"retriever is a {name} {cls.__name__} ({cls.__module__}.{cls.__qualname__}) and this is "
                      f"the {_FRAMEWORKS[framework][0]} integration: use {llm} for {name} retrievers{inner}")


async def aiter_in_thread(make_iterable: Callable[[], Iterable[T]]) -> AsyncIterator[T]:
    """Run a blocking iterator in one dedicated thread and yield its items to the event loop.

    A generation must stay in one thread: torch's inference mode is per thread, and a generator resumed
    from different executor threads (what frameworks' default async streaming does) would lose it. The
    thread runs in a copy of the caller's context; breaking out of the loop stops the generation at its
    next token.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    done = object()

    def post(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:          # the loop closed under us: nobody is listening any more
            cancelled.set()

    def work() -> None:
        try:
            for item in make_iterable():
                if cancelled.is_set():
                    return
                post((True, item))
        except BaseException as err:   # re-raised in the consumer
            post((False, err))
            return
        post((True, done))

    thread = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True,
                              name="flashback-stream")
    thread.start()
    try:
        while True:
            ok, item = await queue.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        cancelled.set()


__all__ = ["CALL_OPTIONS", "HF_EQUIVALENTS", "FirstBlockRetriever", "aiter_in_thread", "build_engine", "call_settings",
           "check_keywords", "framework_of", "from_generate_kwargs", "recorded_source",
           "refuse_foreign_retriever", "report_slides", "resolve_config", "result_summary",
           "split_config_fields", "with_first_block"]
