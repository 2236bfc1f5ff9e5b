"""FlashBackLLM: a LlamaIndex LLM that re-retrieves while it decodes (FlashBack, arXiv 2405.04065).

    >>> from flashback_rag.retrievers import BM25Retriever
    >>> from llama_index.llms.flashback import FlashBackLLM
    >>> bm25 = BM25Retriever.build(["Paris is the capital of France.", "Rome is in Italy."])
    >>> llm = FlashBackLLM("tiny-random-llama", retriever=bm25, stride=4, max_new_tokens=8,
    ...                    ignore_eos=True)
    >>> response = llm.complete("The capital of France")
    >>> len(response.raw.token_ids), len(response.raw.retrievals)   # raw reads as the GenerationResult
    (8, 2)
    >>> response.raw["usage"]["completion_tokens"]                  # and is the mapping LlamaIndex counts
    8

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
from typing import Any, Dict, Optional, Sequence

from llama_index.core.base.llms.generic_utils import (
    astream_completion_response_to_chat_response,
    completion_response_to_chat_response,
    stream_completion_response_to_chat_response,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts import PromptTemplate

from flashback_rag import FlashBack, GenerationResult
from flashback_rag.errors import ConfigError
from flashback_rag.framework_settings import FlashBackSettings
from flashback_rag.frameworks import (
    CALL_OPTIONS,
    aiter_in_thread,
    build_engine,
    report_slides,
    result_summary,
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


def _with_context_window(engine: FlashBack, window: int) -> tuple[FlashBack, int]:
    """The engine whose context is ``window`` plus its passage block, and the window it can honour.

    As HuggingFaceLLM does, a window larger than the model's positions is cut down, with a warning.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ConfigError(f"context_window must be a positive integer, got {window!r}")
    block = engine.config.max_block_tokens
    positions = engine.backend.max_context
    if positions is not None and window + block > positions:
        log.warning("context_window %d does not fit this model: %d positions minus %d kept for FlashBack's "
                    "passage block leaves %d; using %d", window, positions, block, positions - block,
                    positions - block)
        window = positions - block
    return build_engine(engine, max_context=window + block), window


def chat_template_prompt(tokenizer) -> Any:
    """messages_to_prompt through the tokenizer's own chat template (None when it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def messages_to_prompt(messages: Sequence[ChatMessage]) -> str:
        turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    return messages_to_prompt


class RawResult(dict):
    """``CompletionResponse.raw``: a mapping, as LlamaIndex's handlers read one (``TokenCountingHandler``
    takes ``raw["usage"]``: prompt, completion and total tokens, plus the ``flashback`` section), holding
    the full :class:`~flashback_rag.GenerationResult` as ``raw["result"]``. Its attributes are the
    result's, so ``response.raw.retrievals`` reads the retrieval log."""

    def __getattr__(self, name: str) -> Any:
        try:
            result = self["result"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(result, name)


class FlashBackLLM(FlashBackSettings, CustomLLM):
    """A LlamaIndex LLM backed by a FlashBack engine.

    Args:
        model: alias (``smollm2-135m``, ``tiny-random-llama``), folder, .gguf file or hub id; or a
            ready ``FlashBack`` engine (``FlashBack.from_server(...)`` too), or a ``(model, tokenizer)``
            pair. With ``server``: the served model's name (default: the server's first). HuggingFaceLLM's
            ``model_name`` works too.
        adapter: a FlashBack adapter (LoRA + marker embeddings) to load onto ``model``.
        server: the URL of a running ``vllm serve`` (``http://HOST:PORT/v1``) to drive instead of a
            model in this process; ``tokenizer``: its tokenizer (folder or hub id) when the folder the
            server loaded is not on this machine.
        retriever: what to re-retrieve from while decoding (see the module docstring).
        config: a ``FlashBackConfig``; its fields may also be given as keywords (``pattern``,
            ``stride``, ``query_tokens``, ``doc_tokens``, ``top_k`` = passages per retrieval...).
        max_new_tokens: tokens to generate per call (also LlamaIndex's ``num_output``).
        context_window: what LlamaIndex may pack into a prompt (prompt + answer), as in HuggingFaceLLM;
            FlashBack keeps room for its passage block on top. Default: the model's positions minus that room.
        temperature, top_p, sample_top_k, seed: sampling (greedy by default).
        repetition_penalty, no_repeat_ngram_size: as in Hugging Face ``generate``.
        generate_kwargs: Hugging Face ``generate`` options (``top_k``, ``do_sample``...), as HuggingFaceLLM takes.
        stop: stop strings; stopping_ids: token ids that end the text; ignore_eos: keep going past EOS.
        system_prompt, query_wrapper_prompt: wrap a ``complete(prompt)`` call's prompt, as HuggingFaceLLM does.
        device (``"cpu"``, ``"cuda:1"``, ``0``, ``-1``), dtype (or ``torch_dtype``), device_map,
            model_kwargs, tokenizer_kwargs: how a model given by name is loaded (Hugging Face's meanings).
        Unknown keywords are errors. ``to_dict`` / ``from_dict`` round-trip every setting but the
        retriever, which is code: re-attach it with ``FlashBackLLM.from_dict(data, retriever=...)``.
        is_chat_model: route query engines through ``chat`` (the tokenizer's chat template).
    """

    is_chat_model: bool = Field(default=False, description="Route query engines through chat().")
    context_window: Optional[int] = Field(default=None, gt=0,
                                          description="Tokens LlamaIndex may pack (prompt + answer).")

    def __init__(self, model: Any = None, **kwargs: Any) -> None:
        window = kwargs.pop("context_window", None)
        if window is not None and kwargs.get("max_context") is not None:
            raise ConfigError("give context_window (what LlamaIndex packs) or max_context (the whole window, "
                              "FlashBack's passage block included), not both")
        if isinstance(kwargs.get("query_wrapper_prompt"), str):       # HuggingFaceLLM takes a plain string too
            kwargs["query_wrapper_prompt"] = PromptTemplate(kwargs["query_wrapper_prompt"])
        engine, fields = self.engine_and_fields(model, kwargs, framework="llama_index",
                                                wrap_retriever=as_flashback_retriever)
        if window is not None:
            engine, window = _with_context_window(engine, window)
            fields["config"] = engine.config
        if fields.get("messages_to_prompt") is None:
            fields["messages_to_prompt"] = chat_template_prompt(engine.tokenizer)
        super().__init__(context_window=window, **fields)
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
    def metadata(self) -> LLMMetadata:
        engine, cfg = self._engine, self._engine.config
        # LlamaIndex packs prompts into context_window - num_output; keep room for one passage block.
        window = engine.max_context or 4096
        return LLMMetadata(context_window=self.context_window or max(window - cfg.max_block_tokens, 1),
                           num_output=self.max_new_tokens, model_name=self.model,
                           is_chat_model=self.is_chat_model)

    # ------------------------------------------------------------------------ one call
    def _prepare(self, prompt: str, formatted: bool, kwargs: Dict[str, Any]):
        """The engine for this call (with handed-over nodes as its first block), prompt and settings.

        Runs in the caller's context (not in a worker thread) so it sees the nodes a
        FlashBackNodePostprocessor handed over in this query. An unformatted prompt (a direct
        ``complete`` call) gets ``system_prompt`` and ``query_wrapper_prompt``, as HuggingFaceLLM's
        ``complete`` gives them, in the form LlamaIndex's ``predict`` gives them to a formatted one; then
        ``completion_to_prompt``.
        """
        if not formatted:
            prompt = self.completion_to_prompt(self._extend_prompt(prompt))
        settings = self.generation_settings(kwargs, "FlashBackLLM.complete()")
        engine = self._engine
        passages = pending_passages(prompt)
        if passages:
            engine = with_first_block(engine, passages)
        return engine, prompt, settings

    def _finish(self, result: GenerationResult) -> CompletionResponse:
        self._last_result = result
        report_slides(result, self._engine.max_context)
        return CompletionResponse(text=result.text, raw=self._raw(result),
                                  additional_kwargs=result_summary(result, self._engine.config))

    def _raw(self, result: GenerationResult) -> RawResult:
        return RawResult(usage=self.usage(result).openai(), result=result)

    def _responses(self, engine: FlashBack, prompt: str, settings: Dict[str, Any]) -> CompletionResponseGen:
        """Stream CompletionResponses; the last one also carries the result and its usage as ``raw``."""
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
        yield CompletionResponse(text=text, delta=held or "", raw=self._raw(result),
                                 additional_kwargs=result_summary(result, self._engine.config))

    def _complete(self, prompt: str, formatted: bool, kwargs: Dict[str, Any]) -> CompletionResponse:
        engine, prompt, settings = self._prepare(prompt, formatted, kwargs)
        return self._finish(engine.generate(prompt, **settings))

    async def _acomplete(self, prompt: str, formatted: bool, kwargs: Dict[str, Any]) -> CompletionResponse:
        engine, prompt, settings = self._prepare(prompt, formatted, kwargs)
        return self._finish(await engine.agenerate(prompt, **settings))      # in a worker thread

    def _astream(self, prompt: str, formatted: bool, kwargs: Dict[str, Any]) -> CompletionResponseAsyncGen:
        engine, prompt, settings = self._prepare(prompt, formatted, kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for response in aiter_in_thread(lambda: self._responses(engine, prompt, settings)):
                yield response

        return gen()

    # ------------------------------------------------------------------------ LlamaIndex API
    # The chat methods call the completion steps above, not the decorated completion methods: those would
    # report a second LLM event inside the chat one, and LlamaIndex's TokenCountingHandler would count
    # every chat call twice.
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt, formatted, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        # Not a generator function: the set-up (and the hand-over lookup) happens now, in this context.
        engine, prompt, settings = self._prepare(prompt, formatted, kwargs)
        return self._responses(engine, prompt, settings)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await self._acomplete(prompt, formatted, kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return self._astream(prompt, formatted, kwargs)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return completion_response_to_chat_response(self._complete(self.messages_to_prompt(messages), True, kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        engine, prompt, settings = self._prepare(self.messages_to_prompt(messages), True, kwargs)
        return stream_completion_response_to_chat_response(self._responses(engine, prompt, settings))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        response = await self._acomplete(self.messages_to_prompt(messages), True, kwargs)
        return completion_response_to_chat_response(response)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return astream_completion_response_to_chat_response(self._astream(self.messages_to_prompt(messages),
                                                                          True, kwargs))
