"""ChatFlashBack: FlashBack as a LangChain chat model, through the tokenizer's own chat template.

    >>> from flashback_rag.retrievers import BM25Retriever
    >>> from langchain_flashback import ChatFlashBack
    >>> bm25 = BM25Retriever.build(["Paris is the capital of France."])
    >>> chat = ChatFlashBack(model="tiny-random-llama", retriever=bm25, stride=4, max_new_tokens=6,
    ...                      ignore_eos=True)
    >>> reply = chat.invoke([("system", "Be brief."), ("human", "Capital of France?")])
    >>> reply.type, len(chat.last_result.token_ids)
    ('ai', 6)

Tokenizers without a chat template (the tiny random models) get ``role: content`` lines and a final
``assistant:``.

``batch`` invokes every conversation in a thread of its own; on a vLLM backend (``server=...``) all of
them are in flight at once unless the config's ``max_concurrency`` says otherwise (LangChain's default
pool holds a few threads per core), and vLLM batches their requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Dict, List, Optional

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list

from flashback_rag import GenerationResult
from flashback_rag.errors import ConfigError
from flashback_rag.frameworks import aiter_in_thread

from .llms import FlashBackEngineMixin

# Threads one batch() keeps in flight on a vLLM backend when the config does not set max_concurrency
# (FlashBack.generate_batch's default).
MAX_IN_FLIGHT = 64

ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}


def messages_to_prompt(tokenizer, messages: List[BaseMessage]) -> str:
    """The prompt for ``messages``: the tokenizer's chat template with a generation prompt."""
    turns = [{"role": getattr(m, "role", None) or ROLES.get(m.type, m.type), "content": m.text}
             for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"


class ChatFlashBack(FlashBackEngineMixin, BaseChatModel):
    """A LangChain chat model backed by a FlashBack engine; same constructor as ``FlashBackLLM``.

    ``ChatFlashBack(llm=flashback_llm)`` wraps a ``FlashBackLLM`` as ``ChatHuggingFace(llm=...)`` wraps a
    ``HuggingFacePipeline``: the same engine (model, retriever, settings), prompts through the chat template.
    Replies carry ``usage_metadata`` (input, output, total tokens) and ``response_metadata["token_usage"]``
    with the ``flashback`` section (passage and echo tokens the engine fed).
    """

    def __init__(self, model: Any = None, *, llm: Any = None, **kwargs: Any) -> None:
        if llm is None:
            super().__init__(model, **kwargs)
            return
        from .llms import FlashBackLLM

        if not isinstance(llm, FlashBackLLM) or model is not None:
            raise ConfigError("ChatFlashBack(llm=...) takes a langchain_flashback.FlashBackLLM (and no model=); "
                              f"got {type(llm).__name__}")
        # its engine as it is, and its settings as the defaults; the keywords given here override them
        settings = {k: v for k, v in llm.model_dump(exclude={"retriever"}).items() if k in type(self).model_fields
                    and k not in {"model", "adapter", "server", "tokenizer", "config", "device", "dtype",
                                  "device_map", "model_kwargs", "tokenizer_kwargs"}}
        super().__init__(llm.engine, **{**settings, **kwargs})
        # the very engine, shared; record where it came from, so serialising this chat model rebuilds it
        self.model, self.adapter, self.server, self.tokenizer = llm.model, llm.adapter, llm.server, llm.tokenizer
        self.retriever = llm.retriever

    def get_num_tokens_from_messages(self, messages: List[BaseMessage], tools: Any = None) -> int:
        """Tokens of the prompt these messages become (the tokenizer's chat template), as the model reads it."""
        if tools:
            raise ConfigError("ChatFlashBack does not take tools, so it cannot count their tokens")
        return len(self._engine.encode_prompt(messages_to_prompt(self._engine.tokenizer, messages))[0])

    @classmethod
    def get_lc_namespace(cls) -> List[str]:
        # LangChain's load imports the class from this module path: it must be where the class lives.
        return ["langchain_flashback", "chat_models"]

    @property
    def _llm_type(self) -> str:
        return "flashback-chat"

    @property
    def _identifying_params(self) -> Dict[str, Any]:
        return self._params()

    def batch(self, inputs: List[Any], config: RunnableConfig | List[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> List[BaseMessage]:
        """LangChain's ``batch`` (one thread per input); on a vLLM backend every input in flight at once."""
        if inputs and self._engine.backend.concurrent:
            configs = get_config_list(config, len(inputs))
            if configs[0].get("max_concurrency") is None:
                config = [{**c, "max_concurrency": min(len(inputs), MAX_IN_FLIGHT)} for c in configs]
        return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _generate(self, messages: List[BaseMessage], stop: Optional[List[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        return self._chat_result(self._run(messages_to_prompt(self._engine.tokenizer, messages), stop, kwargs))

    def _usage_fields(self, result: GenerationResult) -> Dict[str, Any]:
        """What a reply message carries about its cost: ``usage_metadata`` and ``response_metadata``."""
        usage = self.usage(result)
        return {"usage_metadata": usage.langchain(),
                "response_metadata": {"token_usage": usage.openai(), "model_name": self.model,
                                      "finish_reason": result.finish_reason}}

    async def _agenerate(self, messages: List[BaseMessage], stop: Optional[List[str]] = None,
                         run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                         **kwargs: Any) -> ChatResult:
        prompt = messages_to_prompt(self._engine.tokenizer, messages)
        result = await self._engine.agenerate(prompt, **self._settings(stop, kwargs))
        self._finished([result])
        return self._chat_result(result)

    def _chat_result(self, result: GenerationResult) -> ChatResult:
        message = AIMessage(content=result.text, **self._usage_fields(result))
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=self._summary(result))],
                          llm_output={"token_usage": self._token_usage([result]), "model_name": self.model})

    def _stream(self, messages: List[BaseMessage], stop: Optional[List[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        prompt = messages_to_prompt(self._engine.tokenizer, messages)
        for delta, result in self._deltas(prompt, stop, kwargs):
            chunk = self._chunk(delta, result)
            if run_manager and delta:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk

    async def _astream(self, messages: List[BaseMessage], stop: Optional[List[str]] = None,
                       run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        prompt = messages_to_prompt(self._engine.tokenizer, messages)
        async for delta, result in aiter_in_thread(lambda: self._deltas(prompt, stop, kwargs)):
            chunk = self._chunk(delta, result)
            if run_manager and delta:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk

    def _chunk(self, delta: str, result: Optional[GenerationResult]) -> ChatGenerationChunk:
        """A streamed piece; the last one (``result`` given) carries the usage, which LangChain sums over
        the chunks, so only that one has it."""
        if result is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=delta))
        return ChatGenerationChunk(message=AIMessageChunk(content=delta, **self._usage_fields(result)),
                                   generation_info=self._summary(result))
