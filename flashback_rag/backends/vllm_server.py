"""The vLLM server backend: a running ``vllm serve`` (OpenAI-compatible HTTP), driven with token ids.

Each segment is one streamed ``/v1/completions`` request whose prompt is the logical context as token
ids. The server's automatic prefix cache reuses every full block of the running prefix (FlashBack's
append layout keeps it unchanged), and its continuous batching serves many sequences at once: run
generations from several threads (``FlashBack.generate_batch``) and the server batches them.

Start a server with ``--enable-prefix-caching --enable-prompt-tokens-details`` (the second makes it
report cached tokens per request)::

    vllm serve ./smollm2-flashback --enable-prefix-caching --enable-prompt-tokens-details

    >>> from flashback_rag.backends.vllm_server import VLLMServerBackend
    >>> VLLMServerBackend("http://127.0.0.1:9/v1", model="m", max_context=2048).base_path
    '/v1'
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..errors import BackendError, ConfigError
from ..results import GenerationResult
from .base import SamplingSettings
from .vllm_common import check_supported, finish_tokens, record_request, request_sampling

# Network failures that mean "the server is down, or died while answering".
_NETWORK_ERRORS = (ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError, OSError)
# What a kept-alive connection the server closed while idle (uvicorn: after 5 s) gives on its next use.
_STALE_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class VLLMServerBackend:
    """Talks to ``base_url`` (``http://host:port/v1``). ``model``: the served model name (default: the
    server's first); ``timeout``: seconds to wait for any byte of an answer before giving up."""

    name = "vllm-server"
    concurrent = True
    custom_positions = False     # vLLM numbers a request's tokens itself

    def __init__(self, base_url: str, model: str | None = None, *, timeout: float = 120.0,
                 max_context: int | None = None, api_key: str | None = None) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"the vLLM server URL must look like http://HOST:PORT/v1, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path or ""
        self.timeout = timeout
        self.api_key = api_key
        self.model_info: dict[str, Any] = {}
        if model is None or max_context is None:
            self.model_info = self._first_model(model)
        self.model = model or self.model_info["id"]
        self._max_context = max_context or self.model_info.get("max_model_len")
        self._requests = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------ what the loop reads
    @property
    def max_context(self) -> int | None:
        # vLLM counts the last sampled token against max_model_len too (the loop counts what is read)
        return self._max_context - 1 if self._max_context else None

    @property
    def model_type(self) -> str:
        return f"served:{self.model}"

    @property
    def model_path(self) -> str | None:
        """Where the server loaded the model from (its ``root``), when it says."""
        return self.model_info.get("root")

    def session(self, result: GenerationResult, sampling: SamplingSettings, *, use_cache: bool = True,
                capacity: int | None = None) -> "ServerSession":
        check_supported(sampling, self.name, use_cache)
        return ServerSession(self, result, sampling)

    # ------------------------------------------------------------------------ HTTP
    def connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def unreachable(self, err: BaseException, during: str) -> BackendError:
        return BackendError(f"the vLLM server at {self.base_url} {during}: {type(err).__name__}: {err}")

    def _first_model(self, wanted: str | None) -> dict[str, Any]:
        conn = self.connect()
        try:
            conn.request("GET", f"{self.base_path}/models", headers=self.headers())
            response = conn.getresponse()
            body = response.read()
        except _NETWORK_ERRORS as err:
            raise self.unreachable(err, "is not reachable") from None
        finally:
            conn.close()
        if response.status != 200:
            raise BackendError(f"the vLLM server at {self.base_url} answered {response.status} to GET /models")
        models = json.loads(body).get("data") or []
        for info in models:
            if wanted is None or info.get("id") == wanted:
                return info
        served = ", ".join(m.get("id", "?") for m in models) or "none"
        raise BackendError(f"the vLLM server at {self.base_url} does not serve {wanted!r} (it serves: {served})")

    def next_request_id(self) -> str:
        with self._lock:
            self._requests += 1
            return f"flashback-{id(self):x}-{self._requests}"


class ServerSession:
    """One generation: a keep-alive connection, one streamed request per segment."""

    def __init__(self, backend: VLLMServerBackend, result: GenerationResult, sampling: SamplingSettings) -> None:
        self.backend, self.result, self.sampling = backend, result, sampling
        self.conn: http.client.HTTPConnection | None = None
        self.segments = 0

    def segment(self, context: list[int], max_tokens: int, history: Sequence[int],
                positions: Sequence[int] | None = None) -> Iterator[int]:
        if positions is not None:        # FlashBack refuses such a config before any request
            raise ConfigError("vLLM cannot take position ids per token (block_positions='before')")
        b = self.backend
        # continuous usage: every event carries the usage, so a request the loop stops early (EOS, a
        # stop string) is still recorded with its cached tokens
        body = {"model": b.model, "prompt": list(context), "stream": True, "return_token_ids": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                "request_id": b.next_request_id(), **request_sampling(self.sampling, max_tokens, self.segments)}
        body["logit_bias"] = {str(k): v for k, v in body.get("logit_bias", {}).items()}
        self.segments += 1
        started = time.perf_counter()
        response = self._post(json.dumps(body))
        produced, usage, complete = 0, None, False
        try:
            for event in _events(response, b):
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    new = choice.get("token_ids") or []
                    if choice.get("finish_reason") == "stop":
                        new = finish_tokens(new, "stop", self.sampling.eos_id)
                    for token in new:
                        produced += 1
                        yield token
            complete = True
        finally:
            if not complete:
                # The loop stopped early: drop the connection so the server aborts the request.
                self._drop()
            cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
            record_request(self.result, len(context), cached, time.perf_counter() - started, produced)

    def _post(self, payload: str) -> http.client.HTTPResponse:
        b = self.backend
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                self.conn = b.connect()
            try:
                self.conn.request("POST", f"{b.base_path}/completions", body=payload, headers=b.headers())
            except _NETWORK_ERRORS as err:
                self._drop()
                if fresh or attempt:
                    raise b.unreachable(err, "is not reachable") from None
                continue      # a kept-alive connection the server closed meanwhile: one fresh retry
            try:
                response = self.conn.getresponse()
            except _NETWORK_ERRORS as err:
                self._drop()
                if not fresh and not attempt and isinstance(err, _STALE_ERRORS):
                    continue  # the server had closed the idle kept-alive connection: it read nothing
                # Otherwise it may be working on the request: never send it twice; one clear error.
                raise b.unreachable(err, "did not answer a request") from None
            if response.status != 200:
                detail = response.read().decode("utf-8", "replace")
                try:
                    detail = json.loads(detail).get("error", {}).get("message", detail)
                except (ValueError, AttributeError):
                    pass
                raise BackendError(f"the vLLM server at {b.base_url} refused a request ({response.status}): "
                                   f"{str(detail)[:500]}")
            return response
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self._drop()


def _events(response: http.client.HTTPResponse, backend: VLLMServerBackend) -> Iterator[dict]:
    """The JSON events of a server-sent-event stream, until ``[DONE]``."""
    try:
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                # read the chunked stream to its end, so the kept-alive connection can carry the next
                # request (an unread response makes http.client refuse it after sending)
                response.read()
                return
            event = json.loads(data)
            if "error" in event:
                raise BackendError(f"the vLLM server at {backend.base_url} failed a request: {event['error']}")
            yield event
    except _NETWORK_ERRORS as err:
        raise backend.unreachable(err, "stopped answering during a request") from None
    raise BackendError(f"the vLLM server at {backend.base_url} closed a stream before it finished "
                       "(did the server stop?)")
