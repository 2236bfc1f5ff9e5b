"""FlashBackLLM: a LangChain LLM that re-retrieves while it decodes (FlashBack, arXiv 2405.04065).

    >>> from flashback_rag.retrievers import BM25Retriever
    >>> from langchain_core.output_parsers import StrOutputParser
    >>> from langchain_core.prompts import PromptTemplate
    >>> from langchain_flashback import FlashBackLLM
    >>> bm25 = BM25Retriever.build(["Paris is the capital of France.", "Rome is in Italy."])
    >>> llm = FlashBackLLM(model="tiny-random-llama", retriever=bm25, stride=4, max_new_tokens=8,
    ...                    ignore_eos=True)
    >>> chain = PromptTemplate.from_template("Tell me about {topic}.") | llm | StrOutputParser()
    >>> isinstance(chain.invoke({"topic": "France"}), str)
    True
    >>> len(llm.last_result.retrievals)       # 8 tokens, a retrieval every 4
    2

Every ``stride`` generated tokens it retrieves with the last ``query_tokens`` tokens and appends the
passages after the running text (``pattern="append"``, FlashBack) or prepends them (the baseline).
The retriever may be any LangChain retriever or vector store, a flashback-rag retriever or an index
folder; in a RAG chain, pass the chain's own retriever to re-retrieve from the same source.

Concurrency: each call keeps its own state, so one FlashBackLLM serves ``batch``, threads and asyncio
tasks at once (async calls run each generation in one worker thread); they share the weights
read-only. ``last_result`` is the most recent call to finish; with concurrent calls read the
``generation_info`` of each generation instead.

Serving at scale: ``FlashBackLLM(server="http://HOST:PORT/v1", retriever=...)`` drives a running
``vllm serve`` of a folder ``flashback export`` wrote (its settings come from that folder). There
``batch`` / ``abatch`` keep every prompt in flight at once (``FlashBack.generate_batch``) and vLLM
batches their requests, each sequence re-retrieving on its own schedule; on transformers they run one
after another, as before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any, Dict, List, Optional

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from flashback_rag import FlashBackConfig, GenerationResult
from flashback_rag.errors import ConfigError
from flashback_rag.framework_settings import FlashBackSettings
from flashback_rag.frameworks import CALL_OPTIONS, aiter_in_thread, report_slides, result_summary
from flashback_rag.usage import TokenUsage

from .retrievers import as_flashback_retriever

# Per-call keywords (stop is LangChain's own argument and is merged with the instance's stop strings).
CALL_KEYS = tuple(k for k in CALL_OPTIONS if k != "stop")


class FlashBackEngineMixin(FlashBackSettings):
    """What FlashBackLLM and ChatFlashBack share beyond the common settings (``FlashBackSettings``, the
    fields LlamaIndex's FlashBackLLM has too): the constructor, LangChain serialisation, per-call settings,
    streaming, token counting. (A pydantic model, so the LangChain classes inherit its fields.)"""

    def __init__(self, model: Any = None, **kwargs: Any) -> None:
        engine, fields = self.engine_and_fields(model, kwargs, framework="langchain",
                                                wrap_retriever=as_flashback_retriever)
        super().__init__(**fields)
        self._engine = engine

    @classmethod
    def from_model_id(cls, model_id: str, task: str = "text-generation", backend: str = "default",
                      device: Optional[int | str] = None, device_map: Optional[str | Dict[str, Any]] = None,
                      model_kwargs: Optional[Dict[str, Any]] = None, pipeline_kwargs: Optional[Dict[str, Any]] = None,
                      **kwargs: Any):
        """``HuggingFacePipeline.from_model_id``'s signature: ``model_id`` (here also an alias, folder or
        .gguf file), ``device`` (``-1`` CPU, ``0`` the first GPU), ``device_map``, ``model_kwargs`` for
        ``from_pretrained``, ``pipeline_kwargs`` as generation options; other keywords as the constructor's
        (``retriever=`` above all). ``task`` can only be text generation, ``backend`` only the default."""
        if task != "text-generation":
            raise ConfigError(f"task {task!r}: FlashBack generates text with a causal LM (task 'text-generation')")
        if backend != "default":
            raise ConfigError(f"backend {backend!r}: HuggingFacePipeline's openvino / ipex back-ends do not apply; "
                              "FlashBack runs on transformers here, or on a vllm serve with server=")
        return cls(model=model_id, device=device, device_map=device_map, model_kwargs=model_kwargs or {},
                   pipeline_kwargs=pipeline_kwargs or {}, **kwargs)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> List[str]:
        return ["langchain_flashback", "llms"]

    def to_json(self) -> Any:
        """LangChain's ``dumpd`` form, minus a retriever object (code, not a setting; an index path stays)."""
        serialized = super().to_json()
        if serialized.get("type") == "constructor":
            kwargs = dict(serialized["kwargs"])
            kwargs.pop("retriever", None)
            if isinstance(self.retriever, (str, os.PathLike)):
                kwargs["retriever"] = str(self.retriever)
            if isinstance(kwargs.get("config"), FlashBackConfig):
                kwargs["config"] = kwargs["config"].to_dict()
            serialized = {**serialized, "kwargs": kwargs}
        return serialized

    def to_dict(self) -> Dict[str, Any]:
        """Every setting (JSON-friendly) but the retriever, which is code: see :meth:`from_dict`."""
        return {**self.model_dump(exclude={"retriever"}), "_type": self._llm_type}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], **kwargs: Any):
        """Rebuild from :meth:`to_dict` (or LangChain's ``dumpd``); re-attach the retriever: ``retriever=...``."""
        if data.get("lc") == 1 and data.get("type") == "constructor":      # langchain_core.load.dumpd
            data = data.get("kwargs", {})
        data = {k: v for k, v in {**data, **kwargs}.items() if k != "_type"}
        config = data.get("config")
        pattern = config.get("pattern") if isinstance(config, dict) else getattr(config, "pattern", "append")
        if data.get("retriever") is None and pattern != "none":
            raise ConfigError(f"{cls.__name__}.from_dict: the retriever is not serialised (it is code, not a "
                              f"setting) and pattern {pattern!r} needs one: {cls.__name__}.from_dict(data, retriever=...)")
        return cls(**data)

    def get_token_ids(self, text: str) -> List[int]:
        """Token ids with the model's own tokenizer (LangChain's default is GPT-2's, fetched from the hub);
        ``get_num_tokens`` counts these. A ``custom_get_token_ids`` still wins, as LangChain documents."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return self.tokenize(text)

    def _token_usage(self, results: List[GenerationResult]) -> Dict[str, Any]:
        """``llm_output["token_usage"]``: prompt, completion and total tokens summed, plus ``flashback``."""
        return TokenUsage.total(self.usage(r) for r in results).openai()

    def _summary(self, result: GenerationResult) -> Dict[str, Any]:
        return result_summary(result, self._engine.config)

    def _settings(self, stop: Optional[List[str]], kwargs: Dict[str, Any]) -> Dict[str, Any]:
        settings = self.generation_settings(kwargs, f"{type(self).__name__} call", stop=None)
        # a call's stop strings add to the instance's (LangChain's own stop= argument included)
        stops = [*(self.stop or []), *(settings.pop("stop") or []), *(stop or [])]
        return {**settings, "stop": stops or None}

    def _run(self, prompt: str, stop: Optional[List[str]], kwargs: Dict[str, Any]) -> GenerationResult:
        result = self._engine.generate(prompt, **self._settings(stop, kwargs))
        self._finished([result])
        return result

    def _finished(self, results: List[GenerationResult]) -> None:
        for result in results:
            report_slides(result, self._engine.max_context)
        if results:
            self._last_result = results[-1]

    def _deltas(self, prompt: str, stop: Optional[List[str]], kwargs: Dict[str, Any]
                ) -> Iterator[tuple[str, Optional[GenerationResult]]]:
        """(delta, None) as text comes, then ("", result) once the generation is done."""
        stream = self._engine.stream(prompt, **self._settings(stop, kwargs))
        for delta in stream:
            yield delta, None
        self._last_result = stream.result
        report_slides(stream.result, self._engine.max_context)
        yield "", stream.result

    def _params(self) -> Dict[str, Any]:
        cfg = self._engine.config
        return {"model": self.model, "adapter": self.adapter, "server": self.server, "pattern": cfg.pattern,
                "markers": cfg.markers, "stride": cfg.stride, "query_tokens": cfg.query_tokens,
                "doc_tokens": cfg.doc_tokens, "top_k": cfg.top_k, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "sample_top_k": self.sample_top_k,
                "seed": self.seed}


class FlashBackLLM(FlashBackEngineMixin, LLM):
    """A LangChain LLM backed by a FlashBack engine.

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
        max_new_tokens: tokens per call. temperature, top_p, sample_top_k, seed: sampling (greedy by
            default). stop: default stop strings (a call's ``stop`` adds to them). stopping_ids: token ids
            that end the text. ignore_eos.
        generate_kwargs (or HuggingFacePipeline's ``pipeline_kwargs``): Hugging Face ``generate`` options.
        device (``"cpu"``, ``"cuda:1"``, ``0``, ``-1``), dtype (or ``torch_dtype``), device_map, model_kwargs,
            tokenizer_kwargs: how a model given by name is loaded; ``model_id=`` and
            :meth:`from_model_id` as HuggingFacePipeline takes them.
    Token usage: ``generate(...).llm_output["token_usage"]`` (prompt, completion, total and the
    ``flashback`` section: passage and echo tokens the engine fed), counted with the model's tokenizer,
    as ``get_num_tokens`` counts.
    """

    @property
    def _llm_type(self) -> str:
        return "flashback"

    @property
    def _identifying_params(self) -> Dict[str, Any]:
        return self._params()

    # ------------------------------------------------------------------------ LangChain API
    def _call(self, prompt: str, stop: Optional[List[str]] = None,
              run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> str:
        return self._run(prompt, stop, kwargs).text

    async def _acall(self, prompt: str, stop: Optional[List[str]] = None,
                     run_manager: Optional[AsyncCallbackManagerForLLMRun] = None, **kwargs: Any) -> str:
        return (await asyncio.to_thread(self._run, prompt, stop, kwargs)).text

    def _generate(self, prompts: List[str], stop: Optional[List[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> LLMResult:
        # batch() hands every prompt here in one call: generate_batch keeps them all in flight on a vLLM
        # backend (vLLM batches their requests) and runs them one after another on transformers.
        results = self._engine.generate_batch(prompts, **self._settings(stop, kwargs))
        return self._llm_result(results)

    async def _agenerate(self, prompts: List[str], stop: Optional[List[str]] = None,
                         run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                         **kwargs: Any) -> LLMResult:
        results = await self._engine.agenerate_batch(prompts, **self._settings(stop, kwargs))
        return self._llm_result(results)

    def _llm_result(self, results: List[GenerationResult]) -> LLMResult:
        # As LLM._generate's, plus the retrieval log in generation_info and the usage in llm_output.
        self._finished(results)
        return LLMResult(generations=[[Generation(text=r.text, generation_info=self._summary(r))]
                                      for r in results],
                         llm_output={"token_usage": self._token_usage(results), "model_name": self.model})

    def _stream(self, prompt: str, stop: Optional[List[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None,
                **kwargs: Any) -> Iterator[GenerationChunk]:
        for delta, result in self._deltas(prompt, stop, kwargs):
            chunk = GenerationChunk(text=delta, generation_info=self._summary(result) if result else None)
            if run_manager and delta:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk

    async def _astream(self, prompt: str, stop: Optional[List[str]] = None,
                       run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        # One thread per generation (LangChain's default would resume the generator on any thread).
        async for delta, result in aiter_in_thread(lambda: self._deltas(prompt, stop, kwargs)):
            chunk = GenerationChunk(text=delta, generation_info=self._summary(result) if result else None)
            if run_manager and delta:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
