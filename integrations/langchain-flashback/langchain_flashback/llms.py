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
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any, Dict, List, Optional

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer

from flashback_rag import FlashBack, FlashBackConfig, GenerationResult
from flashback_rag.frameworks import aiter_in_thread, build_engine, result_summary, split_config_fields

from .retrievers import as_flashback_retriever

CALL_KEYS = ("max_new_tokens", "temperature", "top_p", "sample_top_k", "seed", "ignore_eos", "use_cache")


class FlashBackEngineMixin(BaseModel):
    """What FlashBackLLM and ChatFlashBack share: the constructor and its fields, the engine, per-call
    settings, streaming. (A pydantic model, so the LangChain classes inherit its fields.)"""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str
    adapter: Optional[str] = None
    retriever: Any = Field(default=None, exclude=True)
    config: Any = Field(default=None)
    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    sample_top_k: int = Field(default=0, ge=0)
    seed: Optional[int] = None
    stop: Optional[List[str]] = None
    ignore_eos: bool = False
    device: Optional[str] = None
    dtype: Optional[str] = None

    _engine: FlashBack = PrivateAttr()
    _last_result: Optional[GenerationResult] = PrivateAttr(default=None)

    @field_serializer("config")
    def _config_as_dict(self, config: Any) -> Optional[Dict[str, Any]]:
        return config.to_dict() if isinstance(config, FlashBackConfig) else config

    def __init__(self, model: Any = None, *, adapter: Optional[str | os.PathLike] = None,
                 retriever: Any = None, config: FlashBackConfig | Dict[str, Any] | None = None,
                 max_new_tokens: int = 256, device: Optional[str] = None, dtype: Optional[str] = None,
                 **kwargs: Any) -> None:
        engine, name, rest = self._build(model, adapter, retriever, config, device, dtype, kwargs)
        super().__init__(model=name, adapter=None if adapter is None else str(adapter), retriever=retriever,
                         config=engine.config, max_new_tokens=max_new_tokens, device=device, dtype=dtype,
                         **rest)
        self._engine = engine

    @staticmethod
    def _build(model: Any, adapter: Any, retriever: Any, config: Any, device: Any, dtype: Any,
               kwargs: Dict[str, Any]) -> tuple[FlashBack, str, Dict[str, Any]]:
        fields, rest = split_config_fields(kwargs)
        if model is None:
            raise TypeError("FlashBackLLM needs model= (an alias such as smollm2-135m, a folder, a .gguf "
                            "file, a hub id, or a FlashBack engine)")
        engine = build_engine(model, adapter=adapter, retriever=as_flashback_retriever(retriever),
                              config=config, device=device, dtype=dtype, **fields)
        if isinstance(model, (str, os.PathLike)):
            name = str(model)
        else:
            name = getattr(engine.model.config, "name_or_path", "") or engine.model.config.model_type
        return engine, name, rest

    @property
    def engine(self) -> FlashBack:
        """The FlashBack engine (model, tokenizer, retriever, config)."""
        return self._engine

    @property
    def last_result(self) -> Optional[GenerationResult]:
        """The GenerationResult of the most recent call to finish (retrievals, timings, slides)."""
        return self._last_result

    def _settings(self, stop: Optional[List[str]], kwargs: Dict[str, Any]) -> Dict[str, Any]:
        get = lambda key: kwargs[key] if key in kwargs else getattr(self, key)   # noqa: E731
        stops = [*(self.stop or []), *(stop or [])]
        return dict(max_new_tokens=get("max_new_tokens"), temperature=get("temperature"),
                    top_p=get("top_p"), top_k=get("sample_top_k"), seed=get("seed"),
                    stop=stops or None, ignore_eos=get("ignore_eos"),
                    use_cache=kwargs.get("use_cache", True))

    def _run(self, prompt: str, stop: Optional[List[str]], kwargs: Dict[str, Any]) -> GenerationResult:
        result = self._engine.generate(prompt, **self._settings(stop, kwargs))
        self._last_result = result
        return result

    def _deltas(self, prompt: str, stop: Optional[List[str]], kwargs: Dict[str, Any]
                ) -> Iterator[tuple[str, Optional[GenerationResult]]]:
        """(delta, None) as text comes, then ("", result) once the generation is done."""
        stream = self._engine.stream(prompt, **self._settings(stop, kwargs))
        for delta in stream:
            yield delta, None
        self._last_result = stream.result
        yield "", stream.result

    def _params(self) -> Dict[str, Any]:
        cfg = self._engine.config
        return {"model": self.model, "adapter": self.adapter, "pattern": cfg.pattern,
                "markers": cfg.markers, "stride": cfg.stride, "query_tokens": cfg.query_tokens,
                "doc_tokens": cfg.doc_tokens, "top_k": cfg.top_k, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "sample_top_k": self.sample_top_k,
                "seed": self.seed}


class FlashBackLLM(FlashBackEngineMixin, LLM):
    """A LangChain LLM backed by a FlashBack engine.

    Args:
        model: alias (``smollm2-135m``, ``tiny-random-llama``), folder, .gguf file or hub id; or a
            ready ``FlashBack`` engine, or a ``(model, tokenizer)`` pair.
        adapter: a FlashBack adapter (LoRA + marker embeddings) to load onto ``model``.
        retriever: what to re-retrieve from while decoding (see the module docstring).
        config: a ``FlashBackConfig``; its fields may also be given as keywords (``pattern``,
            ``stride``, ``query_tokens``, ``doc_tokens``, ``top_k`` = passages per retrieval...).
        max_new_tokens: tokens per call. temperature, top_p, sample_top_k, seed: sampling (greedy by
            default). stop: default stop strings (a call's ``stop`` adds to them). ignore_eos.
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
        # As LLM._generate, plus the retrieval log in generation_info.
        generations = []
        for prompt in prompts:
            result = self._run(prompt, stop, kwargs)
            generations.append([Generation(text=result.text, generation_info=result_summary(result))])
        return LLMResult(generations=generations)

    async def _agenerate(self, prompts: List[str], stop: Optional[List[str]] = None,
                         run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                         **kwargs: Any) -> LLMResult:
        return await asyncio.to_thread(self._generate, prompts, stop, None, **kwargs)

    def _stream(self, prompt: str, stop: Optional[List[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None,
                **kwargs: Any) -> Iterator[GenerationChunk]:
        for delta, result in self._deltas(prompt, stop, kwargs):
            chunk = GenerationChunk(text=delta, generation_info=result_summary(result) if result else None)
            if run_manager and delta:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk

    async def _astream(self, prompt: str, stop: Optional[List[str]] = None,
                       run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        # One thread per generation (LangChain's default would resume the generator on any thread).
        async for delta, result in aiter_in_thread(lambda: self._deltas(prompt, stop, kwargs)):
            chunk = GenerationChunk(text=delta, generation_info=result_summary(result) if result else None)
            if run_manager and delta:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
