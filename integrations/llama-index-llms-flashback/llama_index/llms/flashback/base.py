"""FlashBackLLM: a LlamaIndex LLM that re-retrieves while it decodes (FlashBack, arXiv 2405.04065).

    >>> from flashback_rag.retrievers import BM25Retriever
    >>> from llama_index.llms.flashback import FlashBackLLM
    >>> bm25 = BM25Retriever.build(["Paris is the capital of France.", "Rome is in Italy."])
    >>> llm = FlashBackLLM("tiny-random-llama", retriever=bm25, stride=4, max_new_tokens=8,
    ...                    ignore_eos=True)
    >>> response = llm.complete("The capital of France")
    >>> len(response.raw.token_ids), len(response.raw.retrievals)   # raw: the GenerationResult
    (8, 2)

Every ``stride`` generated tokens it retrieves with the last ``query_tokens`` tokens and appends the
passages after the running text (``pattern="append"``, FlashBack), or prepends them and recomputes
(``pattern="prepend"``, the In-Context RALM baseline). The retriever may be any LlamaIndex retriever
(``index.as_retriever()``), a LlamaIndex index, a flashback-rag retriever or an index folder.

Concurrency: each call keeps its own state (KV cache, sampler, text), so one FlashBackLLM serves
several threads or asyncio tasks at once (async calls run the generation in a worker thread, one
thread per generation, and never block the event loop); they share the model's weights read-only.
``last_result`` is simply the most recent call to finish; with concurrent calls read each
response's ``raw`` instead.

Serving at scale: ``FlashBackLLM(server="http://HOST:PORT/v1", retriever=...)`` drives a running
``vllm serve`` of a folder ``flashback export`` wrote (its settings come from that folder). Async
calls (``acomplete``, ``achat``, their streaming forms) gathered at once are then all in flight and
vLLM batches their requests, each sequence re-retrieving on its own schedule.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from llama_index.core.base.llms.generic_utils import (
    astream_completion_response_to_chat_response,
    completion_response_to_chat_response,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_serializer
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from flashback_rag import FlashBack, FlashBackConfig, GenerationResult
from flashback_rag.config import config_fields
from flashback_rag.errors import ConfigError
from flashback_rag.frameworks import (
    CALL_OPTIONS,
    aiter_in_thread,
    build_engine,
    call_settings,
    check_keywords,
    from_generate_kwargs,
    recorded_source,
    refuse_foreign_retriever,
    report_slides,
    result_summary,
    split_config_fields,
    with_first_block,
)

from .handoff import pending_passages
from .retrievers import as_flashback_retriever

log = logging.getLogger(__name__)

REFINE_PADDING = 500                       # llama_index refine.DEFAULT_RESPONSE_PADDING_SIZE
_WARNED_WINDOWS: set[tuple[int, int]] = set()

# Per-call keyword arguments that reach FlashBack.generate (sample_top_k is its top_k: the name
# top_k belongs to FlashBackConfig, passages per retrieval).
CALL_KEYS = CALL_OPTIONS


def chat_template_prompt(tokenizer) -> Any:
    """messages_to_prompt through the tokenizer's own chat template (None when it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def messages_to_prompt(messages: Sequence[ChatMessage]) -> str:
        turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    return messages_to_prompt


class FlashBackLLM(CustomLLM):
    """A LlamaIndex LLM backed by a FlashBack engine.

    Args:
        model: alias (``smollm2-135m``, ``tiny-random-llama``), folder, .gguf file or hub id; or a
            ready ``FlashBack`` engine (``FlashBack.from_server(...)`` too), or a ``(model, tokenizer)``
            pair. With ``server``: the served model's name (default: the server's first).
        adapter: a FlashBack adapter (LoRA + marker embeddings) to load onto ``model``.
        server: the URL of a running ``vllm serve`` (``http://HOST:PORT/v1``) to drive instead of a
            model in this process; ``tokenizer``: its tokenizer (folder or hub id) when the folder the
            server loaded is not on this machine.
        retriever: what to re-retrieve from while decoding (see the module docstring).
        config: a ``FlashBackConfig``; its fields may also be given as keywords (``pattern``,
            ``stride``, ``query_tokens``, ``doc_tokens``, ``top_k`` = passages per retrieval...).
        max_new_tokens: tokens to generate per call (also LlamaIndex's ``num_output``).
        temperature, top_p, sample_top_k, seed: sampling (greedy by default).
        repetition_penalty, no_repeat_ngram_size: as in Hugging Face ``generate``.
        generate_kwargs: Hugging Face ``generate`` options (``top_k``, ``do_sample``...), as HuggingFaceLLM takes.
        stop: stop strings; ignore_eos: keep going past EOS.
        Unknown keywords are errors. ``to_dict`` / ``from_dict`` round-trip every setting but the
        retriever, which is code: re-attach it with ``FlashBackLLM.from_dict(data, retriever=...)``.
        is_chat_model: route query engines through ``chat`` (the tokenizer's chat template).
    """

    model: str = Field(description="The model: alias, folder, .gguf file or hub id; with server, its name.")
    adapter: Optional[str] = Field(default=None, description="FlashBack adapter folder.")
    server: Optional[str] = Field(default=None, description="A running vllm serve: http://HOST:PORT/v1.")
    tokenizer: Optional[str] = Field(default=None, description="The served model's tokenizer folder or id.")
    retriever: Any = Field(default=None, exclude=True, description="Retriever used while decoding.")
    config: Any = Field(default=None, description="The FlashBackConfig in use.")
    max_new_tokens: int = Field(default=256, gt=0, description="Tokens to generate per call.")
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    sample_top_k: int = Field(default=0, ge=0, description="Sampling top-k (0: off).")
    seed: Optional[int] = Field(default=None)
    stop: Optional[List[str]] = Field(default=None, description="Stop strings.")
    ignore_eos: bool = Field(default=False)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    no_repeat_ngram_size: int = Field(default=0, ge=0)
    generate_kwargs: Dict[str, Any] = Field(default_factory=dict, description="Hugging Face generate options.")
    is_chat_model: bool = Field(default=False)
    device: Optional[str] = Field(default=None)
    dtype: Optional[str] = Field(default=None)

    _engine: FlashBack = PrivateAttr()
    _last_result: Optional[GenerationResult] = PrivateAttr(default=None)

    @field_serializer("config")
    def _config_as_dict(self, config: Any) -> Optional[Dict[str, Any]]:
        return config.to_dict() if isinstance(config, FlashBackConfig) else config

    def __init__(self, model: Any = None, *, adapter: Optional[str | os.PathLike] = None,
                 retriever: Any = None, config: FlashBackConfig | Dict[str, Any] | None = None,
                 max_new_tokens: int = 256, device: Optional[str] = None, dtype: Optional[str] = None,
                 server: Optional[str] = None, tokenizer: Any = None, **kwargs: Any) -> None:
        fields, rest = split_config_fields(kwargs)
        check_keywords(rest, [*type(self).model_fields, *config_fields()], "FlashBackLLM()")
        from_generate_kwargs(rest.get("generate_kwargs"))             # a bad option fails now, not per call
        refuse_foreign_retriever(retriever, "llama_index")
        if model is None and server is None:
            raise TypeError("FlashBackLLM needs model (an alias such as smollm2-135m, a folder, a .gguf file, "
                            "a hub id, or a FlashBack engine) or server= (a running vllm serve's URL)")
        engine = build_engine(model, adapter=adapter, retriever=as_flashback_retriever(retriever),
                              config=config, device=device, dtype=dtype, server=server, tokenizer=tokenizer,
                              **fields)
        if rest.get("messages_to_prompt") is None:
            rest["messages_to_prompt"] = chat_template_prompt(engine.tokenizer)
        super().__init__(**recorded_source(model, engine, tokenizer),
                         adapter=None if adapter is None else str(adapter), retriever=retriever,
                         config=engine.config, max_new_tokens=max_new_tokens, device=device, dtype=dtype,
                         **rest)
        self._engine = engine
        self._warn_small_window()

    def _warn_small_window(self) -> None:
        """Say up front, once per window size, that LlamaIndex's default response modes cannot fit.

        compact (the query engine default) and refine keep 500 tokens of padding for the answer on top of
        num_output, so on a small model (512 positions) every query fails with "Chunk size -450 is not
        positive" before the LLM is called.
        """
        meta = self.metadata
        room = meta.context_window - meta.num_output
        if room < REFINE_PADDING + 100 and (meta.context_window, meta.num_output) not in _WARNED_WINDOWS:
            _WARNED_WINDOWS.add((meta.context_window, meta.num_output))
            log.warning("LlamaIndex's compact and refine response modes (the query engine default) keep %d "
                        "tokens of padding for the answer, more than this model leaves: context_window %d "
                        "(%s positions minus FlashBack's passage block) - num_output %d = %d; use "
                        "as_flashback_query_engine(index, llm) or response_mode='simple_summarize'",
                        REFINE_PADDING, meta.context_window, self._engine.max_context, meta.num_output, room)

    @classmethod
    def class_name(cls) -> str:
        return "FlashBackLLM"

    @classmethod
    def from_dict(cls, data: Dict[str, Any], **kwargs: Any) -> "FlashBackLLM":
        """Rebuild from :meth:`to_dict`; the retriever is not serialised: pass it as ``retriever=``."""
        data = {**data, **kwargs}
        data.pop("class_name", None)
        config = data.get("config")
        pattern = config.get("pattern") if isinstance(config, dict) else getattr(config, "pattern", "append")
        if data.get("retriever") is None and pattern != "none":
            raise ConfigError("FlashBackLLM.from_dict: the retriever is not serialised (it is code, not a "
                              f"setting) and pattern {pattern!r} needs one: "
                              "FlashBackLLM.from_dict(data, retriever=...)")
        return cls(**data)

    @property
    def engine(self) -> FlashBack:
        """The FlashBack engine (model, tokenizer, retriever, config)."""
        return self._engine

    @property
    def last_result(self) -> Optional[GenerationResult]:
        """The GenerationResult of the most recent call to finish (retrievals, timings, slides)."""
        return self._last_result

    @property
    def metadata(self) -> LLMMetadata:
        engine, cfg = self._engine, self._engine.config
        # LlamaIndex packs prompts into context_window - num_output; keep room for one passage block.
        window = engine.max_context or 4096
        return LLMMetadata(context_window=max(window - cfg.max_block_tokens, 1),
                           num_output=self.max_new_tokens, model_name=self.model,
                           is_chat_model=self.is_chat_model)

    # ------------------------------------------------------------------------ one call
    def _prepare(self, prompt: str, formatted: bool, kwargs: Dict[str, Any]):
        """The engine for this call (with handed-over nodes as its first block), prompt and settings.

        Runs in the caller's context (not in a worker thread) so it sees the nodes a
        FlashBackNodePostprocessor handed over in this query.
        """
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        defaults = dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                        top_k=self.sample_top_k, seed=self.seed, stop=self.stop, ignore_eos=self.ignore_eos,
                        use_cache=True, repetition_penalty=self.repetition_penalty,
                        no_repeat_ngram_size=self.no_repeat_ngram_size)
        settings = call_settings(defaults, self.generate_kwargs, kwargs, "FlashBackLLM.complete()")
        engine = self._engine
        passages = pending_passages(prompt)
        if passages:
            engine = with_first_block(engine, passages)
        return engine, prompt, settings

    def _finish(self, result: GenerationResult) -> CompletionResponse:
        self._last_result = result
        report_slides(result, self._engine.max_context)
        return CompletionResponse(text=result.text, raw=result, additional_kwargs=result_summary(result))

    def _responses(self, engine: FlashBack, prompt: str, settings: Dict[str, Any]) -> CompletionResponseGen:
        """Stream CompletionResponses; the last one also carries the GenerationResult as ``raw``."""
        stream = engine.stream(prompt, **settings)
        text, held = "", None
        for delta in stream:
            if held is not None:   # hold one delta back so the last response can carry the result
                text += held
                yield CompletionResponse(text=text, delta=held)
            held = delta
        result = stream.result
        self._last_result = result
        report_slides(result, self._engine.max_context)
        text += held or ""
        yield CompletionResponse(text=text, delta=held or "", raw=result,
                                 additional_kwargs=result_summary(result))

    # ------------------------------------------------------------------------ LlamaIndex API
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        engine, prompt, settings = self._prepare(prompt, formatted, kwargs)
        return self._finish(engine.generate(prompt, **settings))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        # Not a generator function: the set-up (and the hand-over lookup) happens now, in this context.
        engine, prompt, settings = self._prepare(prompt, formatted, kwargs)
        return self._responses(engine, prompt, settings)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        engine, prompt, settings = self._prepare(prompt, formatted, kwargs)
        return self._finish(await engine.agenerate(prompt, **settings))      # in a worker thread

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        engine, prompt, settings = self._prepare(prompt, formatted, kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for response in aiter_in_thread(lambda: self._responses(engine, prompt, settings)):
                yield response

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        prompt = self.messages_to_prompt(messages)
        return completion_response_to_chat_response(await self.acomplete(prompt, formatted=True, **kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        prompt = self.messages_to_prompt(messages)
        responses = await self.astream_complete(prompt, formatted=True, **kwargs)
        return astream_completion_response_to_chat_response(responses)
