"""FlashBackSettings: the one definition of the settings both framework integrations take.

LlamaIndex's ``FlashBackLLM`` and LangChain's ``FlashBackLLM`` / ``ChatFlashBack`` inherit these pydantic
fields (as LlamaIndex's ``OpenAILike`` adds its fields to ``OpenAI`` and lets ``super()`` do the rest), so
a setting is declared, described and checked in one place; each class adds only what its framework has
of its own. Hugging Face spellings work where they mean the same thing (``model_id`` / ``model_name``
for ``model``, ``torch_dtype`` for ``dtype``, ``pipeline_kwargs`` for ``generate_kwargs``), and the names
that do not apply get a message that names the equivalent (``frameworks.HF_EQUIVALENTS``).

    >>> from flashback_rag.framework_settings import FlashBackSettings
    >>> from flashback_rag.retrievers import BM25Retriever
    >>> engine, fields = FlashBackSettings.engine_and_fields(
    ...     "tiny-random-llama", {"retriever": BM25Retriever.build(["Owls hunt at night."]), "stride": 4,
    ...                           "torch_dtype": "float32", "max_new_tokens": 8},
    ...     framework="llama_index", wrap_retriever=None)
    >>> engine.config.stride, fields["model"], fields["dtype"], fields["max_new_tokens"]
    (4, 'tiny-random-llama', 'float32', 8)

Needs pydantic, which both frameworks bring; flashback-rag itself does not import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer

from .config import FlashBackConfig, config_fields
from .decoding import FlashBack
from .frameworks import (
    build_engine,
    call_settings,
    check_keywords,
    from_generate_kwargs,
    recorded_source,
    refuse_foreign_retriever,
    split_config_fields,
)
from .load_options import LoadOptions, dtype_name, merge_option
from .results import GenerationResult
from .usage import TokenUsage

# Hugging Face spellings of a field here: HF name -> field.
ALIASES = {"model_id": "model", "model_name": "model", "torch_dtype": "dtype"}


class FlashBackSettings(BaseModel):
    """The fields, engine and per-call settings of a FlashBack framework class."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: str = Field(description="The model: alias, folder, .gguf file or hub id; with server, its served name.")
    adapter: Optional[str] = Field(default=None, description="FlashBack adapter folder loaded onto model.")
    server: Optional[str] = Field(default=None, description="A running vllm serve: http://HOST:PORT/v1.")
    tokenizer: Optional[str] = Field(default=None, description="The served model's tokenizer folder or id.")
    retriever: Any = Field(default=None, exclude=True, description="What to re-retrieve from while decoding.")
    config: Any = Field(default=None, description="The FlashBackConfig in use.")
    max_new_tokens: int = Field(default=256, gt=0, description="Tokens to generate per call.")
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling.")
    sample_top_k: int = Field(default=0, ge=0, description="Sampling top-k (0: off; top_k is passages).")
    seed: Optional[int] = Field(default=None, description="Sampling seed.")
    stop: Optional[List[str]] = Field(default=None, description="Stop strings.")
    stopping_ids: List[int] = Field(default_factory=list, description="Token ids that end the text, as EOS does.")
    ignore_eos: bool = Field(default=False, description="Keep generating past EOS.")
    repetition_penalty: float = Field(default=1.0, gt=0.0, description="As in Hugging Face generate.")
    no_repeat_ngram_size: int = Field(default=0, ge=0, description="As in Hugging Face generate.")
    generate_kwargs: Dict[str, Any] = Field(default_factory=dict, description="Hugging Face generate options.")
    device: Optional[Union[int, str]] = Field(default=None, description="cpu, cuda, cuda:1, or -1 / 0 as HF pipelines.")
    dtype: Optional[str] = Field(default=None, description="float32, bfloat16, float16 (alias: torch_dtype).")
    device_map: Optional[Union[str, Dict[str, Any]]] = Field(
        default=None, description="Hugging Face device_map ('auto' spreads a model over the devices).")
    model_kwargs: Dict[str, Any] = Field(default_factory=dict, description="Options for from_pretrained.")
    tokenizer_kwargs: Dict[str, Any] = Field(default_factory=dict, description="Options for the tokenizer.")

    _engine: FlashBack = PrivateAttr()
    _last_result: Optional[GenerationResult] = PrivateAttr(default=None)

    @field_serializer("config")
    def _config_as_dict(self, config: Any) -> Optional[Dict[str, Any]]:
        return config.to_dict() if isinstance(config, FlashBackConfig) else config

    # ------------------------------------------------------------------------ construction
    @classmethod
    def engine_and_fields(cls, model: Any, kwargs: Dict[str, Any], *, framework: str,
                          wrap_retriever: Optional[Callable[[Any], Any]]) -> tuple[FlashBack, Dict[str, Any]]:
        """The engine and the pydantic fields for a constructor called with ``model`` and ``kwargs``.

        framework:      ``"llama_index"`` or ``"langchain"`` (the other one's retrievers are refused);
        wrap_retriever: turns the framework's retrievers into flashback-rag ones.
        """
        where = f"{cls.__name__}()"
        kwargs = dict(kwargs)
        for hf_name, name in ALIASES.items():
            if hf_name in kwargs:
                value = kwargs.pop(hf_name)
                current = model if name == "model" else kwargs.get(name)
                if current is not None and current != value:
                    raise TypeError(f"{where} got {name} and its Hugging Face spelling {hf_name}; give one")
                if name == "model":
                    model = value
                else:
                    kwargs[name] = value
        if "pipeline_kwargs" in kwargs:         # HuggingFacePipeline's generation options: generate_kwargs here
            kwargs["generate_kwargs"] = {**(kwargs.pop("pipeline_kwargs") or {}), **(kwargs.get("generate_kwargs") or {})}
        fields, rest = split_config_fields(kwargs)
        check_keywords(rest, [*cls.model_fields, *config_fields()], where)
        from_generate_kwargs(rest.get("generate_kwargs"))             # a bad option fails now, not per call
        retriever = rest.pop("retriever", None)
        refuse_foreign_retriever(retriever, framework)
        server = rest.pop("server", None)
        if model is None and server is None:
            raise TypeError(f"{cls.__name__} needs model= (an alias such as smollm2-135m, a folder, a .gguf file, a "
                            "hub id, a FlashBack engine or a (model, tokenizer) pair) or server= (a running "
                            "vllm serve's URL)")
        # dtype and device_map may come inside model_kwargs, as in Hugging Face examples: one place each
        options = LoadOptions(device_map=rest.pop("device_map", None), model_kwargs=rest.pop("model_kwargs", None),
                              tokenizer_kwargs=rest.pop("tokenizer_kwargs", None))
        dtype = merge_option("dtype", dtype_name(rest.pop("dtype", None)), options.dtype)
        device, adapter, tokenizer = rest.pop("device", None), rest.pop("adapter", None), rest.pop("tokenizer", None)
        engine = build_engine(model, adapter=adapter,
                              retriever=wrap_retriever(retriever) if wrap_retriever else retriever,
                              config=rest.pop("config", None), device=device, dtype=dtype, server=server,
                              tokenizer=tokenizer, device_map=options.device_map, model_kwargs=options.model_kwargs,
                              tokenizer_kwargs=options.tokenizer_kwargs, **fields)
        engine._stop_ids(rest.get("stopping_ids"))                       # bad token ids fail now
        return engine, {**recorded_source(model, engine, tokenizer),
                        "adapter": None if adapter is None else str(adapter), "retriever": retriever,
                        "config": engine.config, "device": device, "dtype": dtype,
                        "device_map": options.device_map, "model_kwargs": options.model_kwargs,
                        "tokenizer_kwargs": options.tokenizer_kwargs, **rest}

    # ------------------------------------------------------------------------ what every call uses
    @property
    def engine(self) -> FlashBack:
        """The FlashBack engine (model, tokenizer, retriever, config)."""
        return self._engine

    @property
    def last_result(self) -> Optional[GenerationResult]:
        """The GenerationResult of the most recent call to finish (retrievals, timings, slides)."""
        return self._last_result

    def tokenize(self, text: str) -> List[int]:
        """Token ids of ``text`` with the model's own tokenizer (no special tokens added): what the
        frameworks' token counters should use (LangChain's ``get_num_tokens``, LlamaIndex's
        ``TokenCountingHandler(tokenizer=llm.tokenize)``)."""
        return list(self._engine.tokenizer(text, add_special_tokens=False).input_ids)

    def generation_settings(self, kwargs: Dict[str, Any], where: str, **defaults: Any) -> Dict[str, Any]:
        """FlashBack.generate keywords for one call: these settings (``defaults`` replace some), then the
        call's keywords."""
        defaults = dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                        top_k=self.sample_top_k, seed=self.seed, stop=self.stop, ignore_eos=self.ignore_eos,
                        use_cache=True, repetition_penalty=self.repetition_penalty,
                        no_repeat_ngram_size=self.no_repeat_ngram_size,
                        stop_token_ids=list(self.stopping_ids) or None) | defaults
        return call_settings(defaults, self.generate_kwargs, kwargs, where)

    def usage(self, result: GenerationResult) -> TokenUsage:
        """The token usage of one of this engine's generations."""
        return TokenUsage.of(result, self._engine.config)


__all__ = ["ALIASES", "FlashBackSettings"]
