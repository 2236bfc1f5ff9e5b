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

The server is not trusted: every request has a total deadline (``timeout``: connecting, sending and
every byte of the answer, however slowly they come), a request is never sent twice (FlashBack requests
are not idempotent for the caller: a retried one could be generated twice), and everything received is
checked (JSON shapes and types, token ids against the vocabulary and the markers, token counts against
the request). Whatever goes wrong is one :class:`~flashback_rag.errors.BackendError` naming the server
and what was wrong.
"""

from __future__ import annotations

import http.client
import json
import math
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..config import MAX_WAIT
from ..errors import BackendError, ConfigError
from ..results import GenerationResult
from .base import SamplingSettings
from .vllm_common import check_supported, finish_tokens, record_request, request_sampling

# Network failures that mean "the server is down, or died while answering".
_NETWORK_ERRORS = (ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError, OSError)
# Longest line of an event stream, and longest body of any other answer, that is read: a server that
# sends more (a line without end) is refused rather than held in memory.
MAX_LINE = 16 * 2 ** 20
MAX_BODY = 16 * 2 ** 20
DEFAULT_TIMEOUT = 120.0
# The fields a server-sent-event stream may carry (https://html.spec.whatwg.org/#server-sent-events).
_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:")


def check_timeout(timeout: Any) -> float:
    """A request deadline in seconds: a finite number > 0 (one clear error for anything else)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ConfigError(f"timeout must be a positive number of seconds (the longest one request to the vLLM "
                          f"server may take), got {timeout!r}")
    if timeout > MAX_WAIT:
        raise ConfigError(f"timeout must be at most {MAX_WAIT:.0f} seconds, the longest wait Python's sockets "
                          f"and threads can take, got {timeout!r}")
    return float(timeout)


def _snippet(value: Any, limit: int = 200) -> str:
    """A server's text on one line, cut to ``limit`` characters (it goes into a one-line error)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


class _Watchdog:
    """The total deadline of one request: when it passes, the socket is shut down, which ends any read
    or write blocked on it at once (a per-read socket timeout restarts with every byte, so a server
    that sends a keep-alive comment now and then would never time out)."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.fired = False
        self._sock = sock
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


class VLLMServerBackend:
    """Talks to ``base_url`` (``http://host:port/v1``). ``model``: the served model name (default: the
    server's first); ``timeout``: seconds one request may take in all (connecting, sending, and the
    whole streamed answer) before it fails."""

    name = "vllm-server"
    concurrent = True
    custom_positions = False     # vLLM numbers a request's tokens itself

    def __init__(self, base_url: str, model: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_context: int | None = None, api_key: str | None = None) -> None:
        self.timeout = check_timeout(timeout)
        if not isinstance(base_url, str):
            raise ConfigError(f"the vLLM server URL must be a string like http://HOST:PORT/v1, got {base_url!r}")
        parts = urlsplit(base_url.strip().rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"the vLLM server URL must look like http://HOST:PORT/v1, got {base_url!r}")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ConfigError(f"the vLLM server URL {base_url!r} has a port that is not a number in 1..65535")
        if model is not None and (not isinstance(model, str) or not model):
            raise ConfigError(f"the served model's name must be a non-empty string, got {model!r}")
        if max_context is not None and (isinstance(max_context, bool) or not isinstance(max_context, int)
                                        or max_context < 2):
            raise ConfigError(f"max_context must be an integer > 1, got {max_context!r}")
        self.base_url = base_url.strip().rstrip("/")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path or ""
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
    def connect(self, seconds: float | None = None) -> http.client.HTTPConnection:
        """A connected HTTP connection; ``seconds``: the most connecting (and any one read) may take."""
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=min(self.timeout, seconds or self.timeout))
        try:
            conn.connect()
        except _NETWORK_ERRORS as err:
            conn.close()
            raise self.unreachable(err, "is not reachable") from None
        return conn

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def unreachable(self, err: BaseException, during: str) -> BackendError:
        return BackendError(f"the vLLM server at {self.base_url} {during}: {type(err).__name__}: {_snippet(err)}")

    def bad(self, what: str) -> BackendError:
        """The server sent something no vLLM server sends: one line naming it."""
        return BackendError(f"the vLLM server at {self.base_url} {what}")

    def late(self) -> BackendError:
        return self.bad(f"did not finish a request within {self.timeout:g} s (a total per request; raise it "
                        "with --server-timeout, or timeout= in FlashBack.from_server)")

    def _first_model(self, wanted: str | None) -> dict[str, Any]:
        started = time.monotonic()
        conn = self.connect()
        watchdog = _Watchdog(conn.sock, self.timeout - (time.monotonic() - started))
        try:
            conn.request("GET", f"{self.base_path}/models", headers=self.headers())
            response = conn.getresponse()
            body = response.read(MAX_BODY + 1)
        except _NETWORK_ERRORS as err:
            if watchdog.fired:
                raise self.late() from None
            raise self.unreachable(err, "did not answer GET /models") from None
        finally:
            watchdog.cancel()
            conn.close()
        if response.status != 200:
            raise self.bad(f"answered {response.status} to GET /models: {_snippet(body)}")
        try:
            listing = json.loads(body)
        except ValueError:
            raise self.bad(f"answered GET /models with something that is not JSON (is it a vLLM server?): "
                           f"{_snippet(body, 120)}") from None
        models = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
            raise self.bad(f"answered GET /models with JSON that is not a model list (no 'data' list of "
                           f"objects): {_snippet(body, 120)}")
        for info in models:
            self._check_model(info)
        if not models:
            raise self.bad("serves no model (GET /models lists none)")
        for info in models:
            if wanted is None or info["id"] == wanted:
                return info
        served = ", ".join(m["id"] for m in models)
        raise BackendError(f"the vLLM server at {self.base_url} does not serve {wanted!r} (it serves: {served})")

    def _check_model(self, info: dict[str, Any]) -> None:
        """One entry of GET /models: the fields read have the types vLLM gives them."""
        if not isinstance(info.get("id"), str) or not info["id"]:
            raise self.bad(f"lists a model whose 'id' is not a name: {_snippet(info.get('id'))}")
        length = info.get("max_model_len")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 2):
            raise self.bad(f"says model {info['id']!r} has max_model_len {_snippet(length, 60)}, not a number "
                           "of tokens > 1")
        if info.get("root") is not None and not isinstance(info["root"], str):
            raise self.bad(f"says model {info['id']!r} has 'root' {_snippet(info['root'], 60)}, not a path or name")

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
        watchdog, response = self._post(json.dumps(body))
        produced, cached, finish, complete = 0, None, None, False
        try:
            for event in _events(response, b, watchdog):
                usage = _field(event, "usage", dict, b)
                if usage is not None:
                    cached = _cached_tokens(usage, len(context), b)
                choices = _field(event, "choices", list, b) or []
                if len(choices) > 1:
                    raise b.bad(f"sent an event with {len(choices)} choices; one choice was asked for")
                for choice in choices:
                    if not isinstance(choice, dict):
                        raise b.bad(f"sent an event whose choice is not an object: {_snippet(choice, 80)}")
                    new = _field(choice, "token_ids", list, b) or []
                    reason = _field(choice, "finish_reason", str, b)
                    finish = reason or finish
                    for token in new:
                        self._check_token(token)
                    if produced + len(new) > max_tokens:
                        raise b.bad(f"sent more tokens than asked for ({produced + len(new)} > {max_tokens})")
                    if reason == "stop":
                        new = finish_tokens(new, "stop", self.sampling.eos_id)
                    for token in new:
                        produced += 1
                        yield token
            if not response.isclosed():      # more after [DONE] than any server sends: do not reuse it
                self._drop()
            stopped = finish == "stop" and self.sampling.eos_id is not None
            if produced < max_tokens and not stopped:
                raise b.bad(f"sent {produced} of the {max_tokens} tokens asked for and finished "
                            f"({finish or 'no finish_reason'}) without an end-of-text token")
            complete = True
        finally:
            watchdog.cancel()
            if not complete:
                # The loop stopped early (or the answer was bad): drop the connection so the server
                # aborts the request, and the next request starts on a clean one.
                self._drop()
            record_request(self.result, len(context), cached, time.perf_counter() - started, produced)

    def _check_token(self, token: Any) -> None:
        """A token id the loop may take: an integer in the tokenizer's vocabulary, never a marker."""
        b, s = self.backend, self.sampling
        if isinstance(token, bool) or not isinstance(token, int):
            raise b.bad(f"sent token id {_snippet(repr(token), 40)}, which is not an integer")
        if token < 0 or (s.vocab_size is not None and token >= s.vocab_size):
            size = f"of {s.vocab_size} tokens " if s.vocab_size is not None else ""
            raise b.bad(f"sent token id {_snippet(token, 40)}, outside the vocabulary {size}(does it serve the "
                        "model this tokenizer belongs to?)")
        if token in s.banned_ids:
            raise b.bad(f"sent token id {token}, a marker: only the engine places markers (the request bans them; "
                        "does it serve the model this tokenizer belongs to?)")

    def _post(self, payload: str) -> tuple[_Watchdog, http.client.HTTPResponse]:
        """Send one request, once: a kept-alive connection is reused only while the server keeps it open
        (checked before sending, never by sending), and nothing is sent again after a failure."""
        b = self.backend
        started = time.monotonic()
        if self.conn is not None and not _idle_and_open(self.conn):
            self._drop()      # the server closed it while idle (uvicorn: after 5 s): it read nothing
        if self.conn is None:
            self.conn = b.connect()
        watchdog = _Watchdog(self.conn.sock, b.timeout - (time.monotonic() - started))
        try:
            self.conn.request("POST", f"{b.base_path}/completions", body=payload, headers=b.headers())
            response = self.conn.getresponse()
        except _NETWORK_ERRORS as err:
            watchdog.cancel()
            self._drop()
            if watchdog.fired:
                raise b.late() from None
            # It may be working on the request: never send it twice; one clear error.
            raise b.unreachable(err, "did not answer a request") from None
        if response.status != 200:
            try:
                detail = response.read(64 * 1024).decode("utf-8", "replace")
            except _NETWORK_ERRORS:
                detail = ""
            finally:
                watchdog.cancel()
                self._drop()
            try:
                message = json.loads(detail).get("error", {}).get("message", detail)
            except (ValueError, AttributeError):
                message = detail
            raise BackendError(f"the vLLM server at {b.base_url} refused a request ({response.status}): "
                               f"{_snippet(message, 300)}")
        return watchdog, response

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self._drop()


def _idle_and_open(conn: http.client.HTTPConnection) -> bool:
    """Whether a kept-alive connection is still open: nothing may be readable on it while idle (a
    readable socket is the server's close, or bytes nobody asked for)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _field(obj: dict, key: str, kind: type, backend: VLLMServerBackend) -> Any:
    """``obj[key]`` when it is a ``kind`` (or absent / null: None), else one error naming it."""
    value = obj.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        names = {dict: "an object", list: "a list", str: "a string"}
        raise backend.bad(f"sent an event whose '{key}' is {_snippet(repr(value), 60)}, not {names[kind]}")
    return value


def _cached_tokens(usage: dict, prompt_tokens: int, backend: VLLMServerBackend) -> int | None:
    details = _field(usage, "prompt_tokens_details", dict, backend)
    cached = (details or {}).get("cached_tokens")
    if cached is not None and (isinstance(cached, bool) or not isinstance(cached, int)
                               or not 0 <= cached <= prompt_tokens):
        raise backend.bad(f"sent 'cached_tokens' {_snippet(repr(cached), 40)}, not a count between 0 and the "
                          f"{prompt_tokens} prompt tokens")
    return cached


def _events(response: http.client.HTTPResponse, backend: VLLMServerBackend, watchdog: _Watchdog) -> Iterator[dict]:
    """The JSON events of a server-sent-event stream, until ``[DONE]``."""
    try:
        while True:
            raw = response.readline(MAX_LINE + 1)
            if watchdog.fired:
                raise backend.late()
            if len(raw) > MAX_LINE:
                raise backend.bad(f"sent a stream line longer than {MAX_LINE // 2 ** 20} MiB")
            if not raw.endswith(b"\n"):          # the end of the stream, or half a line before it
                break
            line = raw.strip()
            if not line or line.startswith(b":"):          # event separators and keep-alive comments
                continue
            if not line.startswith(_SSE_FIELDS):
                raise backend.bad(f"did not answer with a server-sent event stream (it sent {_snippet(line, 80)!r})")
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                # read the chunked stream to its end, so the kept-alive connection can carry the next
                # request (an unread response makes http.client refuse it after sending)
                response.read(MAX_BODY)
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise backend.bad(f"sent a stream event that is not JSON: {_snippet(data, 80)!r}") from None
            if not isinstance(event, dict):
                raise backend.bad(f"sent a stream event that is not a JSON object: {_snippet(data, 80)!r}")
            if "error" in event:
                error = event["error"]
                message = error.get("message", error) if isinstance(error, dict) else error
                raise backend.bad(f"failed a request: {_snippet(message, 300)}")
            yield event
    except _NETWORK_ERRORS as err:
        if watchdog.fired:
            raise backend.late() from None
        raise backend.unreachable(err, "stopped answering during a request") from None
    if watchdog.fired:
        raise backend.late()
    raise BackendError(f"the vLLM server at {backend.base_url} closed a stream before it finished "
                       "(did the server stop?)")
