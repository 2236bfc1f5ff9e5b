"""A vLLM server that misbehaves, table-driven: every row is one way a server (or its URL) goes wrong.

The server is a few lines of ``http.server`` on 127.0.0.1, started and stopped by each test, that
answers ``GET /models`` and streamed ``POST /completions`` the way ``vllm serve`` does, except for the
one thing a row changes. Every row runs twice: through ``flashback generate --server`` (exactly one
line ``flashback: error: ...`` naming the server and what was wrong, exit code 2) and through
``FlashBack.from_server`` (one :class:`~flashback_rag.errors.FlashBackError` with the same words).
Where a row says so, the server must have received exactly that many POSTs: a FlashBack request is
never sent twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flashback_rag import FlashBack
from flashback_rag.cli import main
from flashback_rag.errors import ConfigError, FlashBackError
from flashback_rag.indexing import build_index
from flashback_rag.retrievers import load_index

MARKED = (0, 0)     # filled by the `tokenizer_folder` fixture: the marker ids of the served tokenizer
DEADLINE = 1.0      # --server-timeout / from_server(timeout=) of every row: a total per request


# ----------------------------------------------------------------------------- the fake server
class FakeServer:
    """``models(handler)`` answers GET /models; ``completions(handler, body, number)`` each POST."""

    def __init__(self, root: Path, models: Callable | None = None, completions: Callable | None = None) -> None:
        self.root, self.posts, self.stopping = root, [], threading.Event()
        self.models = models or good_models()
        self.completions = completions or stream()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"         # keep-alive, as uvicorn does

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.models(self)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.posts.append(body)
                server.completions(self, body, len(server.posts))

        Handler.server_root, Handler.server_stopping = root, self.stopping      # read by the answers
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self) -> "FakeServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(handler, body: bytes | str | dict | list, status: int = 200, ctype: str = "application/json") -> None:
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def good_models(**changes) -> Callable:
    """GET /models as vLLM answers it, with ``changes`` to the one model entry (None drops a key)."""
    def models(handler) -> None:
        entry = {"id": "fake", "object": "model", "root": str(handler.server_root), "max_model_len": 512, **changes}
        answer(handler, {"object": "list", "data": [{k: v for k, v in entry.items() if v is not None}]})
    return models


def raw_models(body, status: int = 200, ctype: str = "application/json") -> Callable:
    return lambda handler: answer(handler, body, status, ctype)


def event(tokens: list, finish=None, usage="default", **choice) -> dict:
    out = {"id": "cmpl-1", "object": "text_completion",
           "choices": [{"index": 0, "text": "x", "token_ids": tokens, "finish_reason": finish, **choice}]}
    if usage == "default":
        usage = {"prompt_tokens": 8, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}}
    if usage is not None:
        out["usage"] = usage
    return out


def sse(items: list) -> bytes:
    """Server-sent events: each item a JSON event (dict / list) or the raw bytes of a data line."""
    lines = [b"data: " + (item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n\n" for item in items]
    return b"".join(lines) + b"data: [DONE]\n\n"


def stream(first: Callable[[int], list] | None = None, later: Callable[[int], list] | None = None) -> Callable:
    """POST /completions streaming ``max_tokens`` good tokens (id 5); ``first(n)`` gives the events of
    the first request instead, ``later(n)`` those of the others."""
    def completions(handler, body, number) -> None:
        n = body["max_tokens"]
        custom = first if number == 1 else later
        events = custom(n) if custom else [event([5], None if i < n - 1 else "length") for i in range(n)]
        answer(handler, sse(events), ctype="text/event-stream")
    return completions


def _forever(handler, chunk: bytes, **headers: str) -> None:
    """Headers, then ``chunk`` every 50 ms until the test ends (or the client hangs up)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    while not handler.server_stopping.is_set():
        try:
            handler.wfile.write(chunk)
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.05)


def keep_alive_forever(handler, body, number) -> None:
    """Headers, then a keep-alive comment every 50 ms and never a token (a stuck server)."""
    _forever(handler, b"e\r\n: keep-alive\n\n\r\n", Transfer_Encoding="chunked")


def silent(handler, body, number) -> None:
    """Headers, then nothing at all until the test ends."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.wfile.flush()
    handler.server_stopping.wait(30)


def drip(handler, body, number) -> None:
    """A token event one byte at a time, 50 ms apart, without end: every read gets a byte."""
    _forever(handler, b"d", Content_Length="100000")


def close_second_unanswered(handler, body, number) -> None:
    """The first request is answered on a kept-alive connection; the second is read, then the
    connection closes without a byte of answer (a server that died while working on it)."""
    if number == 1:
        stream()(handler, body, number)
    else:
        handler.close_connection = True
        handler.wfile.flush()
        handler.connection.shutdown(2)


def close_mid_stream(handler, body, number) -> None:
    data = sse([event([5])])[:-len(b"data: [DONE]\n\n")]
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Content-Length", str(len(data) + 500))
    handler.end_headers()
    handler.wfile.write(data)
    handler.close_connection = True


def refuse(status: int, body) -> Callable:
    return lambda handler, body_, number: answer(handler, body, status)


def events_of(*items) -> Callable:
    """The first request streams exactly ``items``."""
    return stream(first=lambda n: list(items))


# ----------------------------------------------------------------------------- the table
# (name, models answer, completions answer, message fragment, POSTs the server must have received or None)
Row = tuple[str, Callable | None, Callable | None, str, int | None]
ROWS: list[Row] = [
    # --- GET /models
    ("models is an HTML page", raw_models("<html><body>Welcome to nginx!</body></html>", ctype="text/html"),
     None, "answered GET /models with something that is not JSON", 0),
    ("models is a JSON list", raw_models([{"id": "fake"}]), None, "JSON that is not a model list", 0),
    ("models data is not a list", raw_models({"data": "fake"}), None, "JSON that is not a model list", 0),
    ("models entry is a string", raw_models({"data": ["fake"]}), None, "JSON that is not a model list", 0),
    ("model id is a number", good_models(id=7), None, "'id'", 0),
    ("no model served", raw_models({"data": []}), None, "serves no model", 0),
    ("max_model_len not a number", good_models(max_model_len="lots"), None, "max_model_len", 0),
    ("max_model_len negative", good_models(max_model_len=-5), None, "max_model_len", 0),
    ("max_model_len a float", good_models(max_model_len=512.5), None, "max_model_len", 0),
    ("root is a number", good_models(root=3), None, "'root'", 0),
    ("models answers 500", raw_models("boom", status=500), None, "answered 500 to GET /models", 0),
    # --- what a stream holds
    ("stream line not JSON", None, events_of(b"{bad"), "sent a stream event that is not JSON", 1),
    ("stream event is a list", None, events_of([1, 2]), "sent a stream event that is not a JSON object", 1),
    ("stream of HTML", None, lambda h, b, n: answer(h, "<html>\n<h1>Bad gateway</h1>\n</html>\n", ctype="text/html"),
     "did not answer with a server-sent event stream", 1),
    ("choices not a list", None, events_of({"choices": "x"}), "'choices'", 1),
    ("two choices", None, events_of({"choices": [event([5])["choices"][0]] * 2}), "one choice", 1),
    ("token ids not a list", None, events_of(event(5)), "'token_ids'", 1),
    ("token id negative", None, events_of(event([-1])), "token id -1", 1),
    ("token id a string", None, events_of(event(["5"])), "token id '5'", 1),
    ("token id a float", None, events_of(event([5.0])), "token id 5.0", 1),
    ("token id true", None, events_of(event([True])), "token id True", 1),
    ("token id huge", None, events_of(event([10 ** 30])), "outside the vocabulary", 1),
    ("token id past the vocabulary", None, events_of(event([100000])), "outside the vocabulary", 1),
    ("token id a marker", None, lambda h, b, n: stream(first=lambda n: [event([MARKED[0]])])(h, b, n),
     "a marker", 1),
    ("more tokens than asked", None, stream(first=lambda n: [event([5] * (n + 3), "length")]),
     "more tokens than asked", 1),
    ("fewer tokens than asked", None, stream(first=lambda n: [event([5], "length")]),
     "1 of the 2 tokens asked for", 1),
    ("finish_reason a number", None, events_of(event([5], 7)), "'finish_reason'", 1),
    ("usage a string", None, events_of(event([5], usage="lots")), "'usage'", 1),
    ("cached tokens a string", None, events_of(event([5], usage={"prompt_tokens_details": {"cached_tokens": "x"}})),
     "cached_tokens", 1),
    ("cached tokens negative", None, events_of(event([5], usage={"prompt_tokens_details": {"cached_tokens": -3}})),
     "cached_tokens", 1),
    ("cached tokens past the prompt", None,
     events_of(event([5], usage={"prompt_tokens_details": {"cached_tokens": 10 ** 6}})), "cached_tokens", 1),
    ("error event", None, events_of({"error": {"message": "engine\ndead", "code": 500}}), "failed a request: engine dead", 1),
    ("request refused with a long page", None, refuse(400, "<html>\n" + "x" * 5000 + "\n</html>"),
     "refused a request (400)", 1),
    # --- a server that stops answering
    ("keep-alive comments forever", None, keep_alive_forever, f"did not finish a request within {DEADLINE:g} s", 1),
    ("headers then silence", None, silent, f"did not finish a request within {DEADLINE:g} s", 1),
    ("an event one byte at a time", None, drip, f"did not finish a request within {DEADLINE:g} s", 1),
    ("kept-alive POST closed unanswered", None, close_second_unanswered, "did not answer a request", 2),
    ("stream cut short", None, close_mid_stream, "closed a stream before it finished", 1),
]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """The tiny model's tokenizer with the two markers, saved where the fake /models says it lives."""
    from flashback_rag.models import add_marker_tokens, load_model

    model, tokenizer = load_model("tiny-random-llama")
    ids = add_marker_tokens(model, tokenizer)
    globals()["MARKED"] = (ids.left, ids.right)
    folder = tmp_path_factory.mktemp("served")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory):
    src = tmp_path_factory.mktemp("docs") / "docs.md"
    src.write_text("# Cats\nCats purr when content.\n\nDogs bark at night and guard houses.\n")
    build_index(src, src.parent / "idx", tokenizer="words", chunk_tokens=5)
    return src.parent / "idx"


def serve(root: Path, models, completions) -> FakeServer:
    return FakeServer(root, models, completions)


# Two retrieval points of two tokens each: two requests, so a kept-alive connection carries the second.
ENGINE = {"stride": 2, "query_tokens": 4, "doc_tokens": 4, "top_k": 1}


def run_cli(url: str, index: Path, capsys) -> tuple[int, str]:
    argv = ["generate", "--server", url, "--index", str(index), "--stride", "2", "--query-tokens", "4",
            "--doc-tokens", "4", "--max-new-tokens", "4", "--server-timeout", str(DEADLINE), "cats purr"]
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def run_api(url: str, index: Path) -> str:
    with pytest.raises(FlashBackError) as info:
        fb = FlashBack.from_server(url, retriever=load_index(index), timeout=DEADLINE, **ENGINE)
        fb.generate("cats purr", max_new_tokens=4)
    return str(info.value)


def finished_within(seconds: float, fn, *args):
    """``fn(*args)`` in a daemon thread; fail (without hanging the suite) if it has not returned in time."""
    box: dict = {}

    def work():
        try:
            box["value"] = fn(*args)
        except BaseException as err:       # handed back to the test
            box["error"] = err

    worker = threading.Thread(target=work, daemon=True)
    started = time.perf_counter()
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still waiting on the server after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"], time.perf_counter() - started


@pytest.mark.parametrize("way", ["cli", "api"])
@pytest.mark.parametrize("name, models, completions, message, posts", ROWS, ids=[row[0] for row in ROWS])
def test_misbehaving_server_gives_one_clear_error(name, models, completions, message, posts, way, tokenizer_folder,
                                                  index_folder, capsys):
    with serve(tokenizer_folder, models, completions) as fake:
        if way == "cli":
            (code, err), seconds = finished_within(4 * DEADLINE + 5, run_cli, fake.url, index_folder, capsys)
            assert code == 2, err
            assert err.startswith("flashback: error:"), err
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        else:
            err, seconds = finished_within(4 * DEADLINE + 5, run_api, fake.url, index_folder)
            assert "\n" not in err, err
        assert f"the vLLM server at {fake.url}" in err, err
        assert message in err, err
        assert len(err) < 600, err
        if posts is not None:
            assert len(fake.posts) == posts, f"the server received {len(fake.posts)} POSTs: {err}"
        if "within" in message:       # the deadline is a total: it does not restart with every byte
            assert seconds < DEADLINE + 2.5, seconds


def test_a_good_fake_server_generates(tokenizer_folder, index_folder, capsys):
    """The fake server itself is faithful enough: with no misbehaviour, both ways generate."""
    with serve(tokenizer_folder, None, None) as fake:
        result = FlashBack.from_server(fake.url, retriever=load_index(index_folder), timeout=DEADLINE,
                                       **ENGINE).generate("cats purr", max_new_tokens=4)
        assert result.token_ids == [5, 5, 5, 5] and len(fake.posts) == 2
        code, err = run_cli(fake.url, index_folder, capsys)
        assert code == 0, err
        # the second request went out on the same kept-alive connection, and nothing was sent twice
        assert len(fake.posts) == 4


# ----------------------------------------------------------------------------- URLs and deadlines
@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:abc/v1", "port"),
    ("http://127.0.0.1:99999/v1", "port"),
    ("ftp://127.0.0.1/v1", "must look like http://HOST:PORT/v1"),
    ("127.0.0.1:8000", "must look like http://HOST:PORT/v1"),
])
def test_bad_server_urls(url, message, capsys):
    with pytest.raises(ConfigError, match=message):
        FlashBack.from_server(url, tokenizer="unused", pattern="none")
    capsys.readouterr()
    assert main(["generate", "--server", url, "--pattern", "none", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flashback: error:") and message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5", True, None, 1e300])
def test_from_server_timeout_is_validated(timeout):
    with pytest.raises(ConfigError, match="timeout must be (a positive number|at most)"):
        FlashBack.from_server("http://127.0.0.1:9/v1", tokenizer="unused", pattern="none", timeout=timeout)


@pytest.mark.parametrize("value", ["0", "-2", "nan", "inf", "1e300"])
def test_server_timeout_flag_is_validated(value, capsys):
    assert main(["generate", "--server", "http://127.0.0.1:9/v1", "--server-timeout", value, "--pattern", "none",
                 "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flashback: error: --server-timeout must be a number of seconds in (0, "), err


def test_unreachable_server_names_itself(capsys):
    """Nothing listens on port 9 here: one line, and it comes back at once."""
    assert main(["generate", "--server", "http://127.0.0.1:9/v1", "--server-timeout", "2", "--pattern", "none",
                 "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the vLLM server at http://127.0.0.1:9/v1 is not reachable" in err and len(err.splitlines()) == 1, err
