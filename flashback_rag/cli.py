"""The ``flashback`` command: thin argument parsing over the library's modules.

    $ flashback index build --input docs/ --out my-index
    $ flashback index build --input hf:wikitext:wikitext-103-raw-v1:train --backend lucene --out wiki-index
    $ flashback index search my-index "how do context managers work" -k 3
    $ flashback retrieve --index my-index --input notes.txt --stride 16 --top-k 2 --out records.jsonl
    $ flashback generate --model smollm2-135m --index my-index --pattern append "The with statement"
    $ flashback demo --json

Every error a user can cause prints one line, ``flashback: error: ...``, and exits with code 2. The
option values, input files and output paths of every command are checked first, before any model
loads (``cli_checks.check_arguments``); the hostile-input table in ``tests/unit/test_hostile_cli.py``
holds the cases.
Other command groups (training, retrieval records, ...) live in their own modules and are listed in
``COMMAND_MODULES``; each has ``add_commands(subparsers)``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from .config import PATTERNS, RETRIEVE, FlashBackConfig
from .errors import FlashBackError, os_error_message
from .io_utils import dumps_json, holding, read_stdin

# Modules that add sub-commands: each defines add_commands(subparsers) -> None.
COMMAND_MODULES: list[str] = [
    "flashback_rag.demo",
    "flashback_rag.retrieve",
    "flashback_rag.training.commands",
]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is printed by --help, not on every typo)."""

    def error(self, message: str):
        self.exit(2, f"flashback: error: {message} (see `{self.prog} --help`)\n")


def add_engine_arguments(parser: argparse.ArgumentParser, model_default: str | None = "smollm2-135m") -> None:
    """Flags shared by every command that runs the engine (generate, demo, benchmarks...)."""
    g = parser.add_argument_group("engine")
    g.add_argument("--model", default=model_default, help="alias, local folder, .gguf file or HF id "
                   "(default: %(default)s)")
    # Layout flags default to None: the model's own settings (a FlashBack model or adapter records the
    # layout it was trained for) or FlashBackConfig's defaults fill in what is not given.
    g.add_argument("--pattern", default=None, choices=PATTERNS, help="context pattern (default: append)")
    g.add_argument("--markers", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap passages in <MARK_L>/<MARK_R> (default: on)")
    g.add_argument("--stride", type=int, default=None, help="re-retrieve every N generated tokens (default 16)")
    g.add_argument("--retrieve", default=None, choices=RETRIEVE,
                   help="periodic: every --stride tokens (default); once: at the prompt only, its passages "
                        "kept for the whole generation (the usual retrieve-then-generate RAG)")
    g.add_argument("--keep-unchanged", action=argparse.BooleanOptionalAction, default=None,
                   help="append: a retrieval point that finds the passages already in place keeps their block "
                        "(no crop, no re-feed; default); --no-keep-unchanged re-inserts it, as the paper does")
    g.add_argument("--query-tokens", type=int, default=None, help="query = last N tokens (default 32)")
    g.add_argument("--doc-tokens", type=int, default=None, help="truncate each passage to N tokens (default 128)")
    g.add_argument("--top-k", type=int, default=None, help="passages per retrieval (default 1)")
    g.add_argument("--echo-tokens", type=int, default=None,
                   help="append: repeat the last N prefix tokens after the passage block (default 0)")
    g.add_argument("--block-positions", choices=("after", "before"), default=None,
                   help="append: the block's position ids, after the prefix (the paper's) or before the "
                        "first token (default: the model's, else after)")
    g.add_argument("--max-context", type=int, default=None, help="cap the context window (tokens)")
    g.add_argument("--strict", action="store_true", help="stop when the retriever fails (default: skip)")
    g.add_argument("--retrieval-timeout", type=float, default=None,
                   help="seconds a retrieval may take before it counts as failed (default: no limit)")
    g.add_argument("--adapter", default=None, help="adapter folder from `flashback train` (LoRA + markers)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    g.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: by device)")
    g.add_argument("--device-map", default=None,
                   help="instead of --device: 'auto' spreads a model too large for one GPU over all GPUs "
                        "(then the CPU); needs accelerate")


ENGINE_FIELDS = ("pattern", "markers", "stride", "query_tokens", "doc_tokens", "top_k", "echo_tokens",
                 "block_positions", "max_context", "retrieval_timeout", "retrieve", "keep_unchanged")


def config_from_args(args: argparse.Namespace, base: FlashBackConfig | None = None) -> FlashBackConfig:
    """``base`` (a model's recorded settings, else the defaults) with the flags that were given."""
    given = {name: getattr(args, name) for name in ENGINE_FIELDS if getattr(args, name, None) is not None}
    if getattr(args, "strict", False):
        given["strict"] = True
    return (base or FlashBackConfig()).replace(**given)


# ----------------------------------------------------------------------------- generate
def _cmd_generate(args: argparse.Namespace) -> int:
    from .decoding import FlashBack
    from .models import load_model
    from .retrievers import load_index

    config = config_from_args(args)          # validate flags before loading anything heavy
    prompt = read_stdin("the prompt on stdin") if args.prompt == "-" else args.prompt   # strict UTF-8
    if config.retrieves and not args.index:
        raise FlashBackError(f"--pattern {config.pattern} needs --index DIR (or use --pattern none)")
    retriever = load_index(args.index, embedder=args.embedder) if args.index else None
    if args.server:
        # a running `vllm serve`: its folder's flashback.json gives the defaults, the flags override
        if args.adapter:
            raise FlashBackError("--adapter cannot apply to a served model: `flashback export --adapter` "
                                 "merges it into a folder to serve")
        from .serving import server_parts

        backend, tokenizer, recorded = server_parts(args.server, args.tokenizer, args.served_model,
                                                    timeout=args.server_timeout)
        fb = FlashBack(None, tokenizer, retriever, config_from_args(args, recorded), backend=backend)
    else:
        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype, adapter=args.adapter,
                                      device_map=args.device_map)
        config = config_from_args(args, getattr(model, "flashback_config", None))
        fb = FlashBack(model, tokenizer, retriever, config)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                   top_k=args.sample_top_k, seed=args.seed, stop=args.stop or None,
                   repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size)
    if args.stream and not args.json:
        stream = fb.stream(prompt, **options)
        for delta in stream:
            print(delta, end="", flush=True)
        print()
        result = stream.result
    else:
        result = fb.generate(prompt, **options)
        if not args.json:
            print(result.text)
    if args.json:
        print(dumps_json(result.to_dict(), indent=2))
    else:
        s = result.stats
        print(f"[{s.generated_tokens} tokens in {s.total_seconds:.2f}s, {s.tokens_per_second:.1f} tok/s; "
              f"{s.retrievals} retrievals ({s.blocks_changed} changed the passages), {len(result.slides)} window "
              f"slides; finish: {result.finish_reason}]",
              file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- index
def _cmd_index_build(args: argparse.Namespace) -> int:
    from .indexing import build_index

    # Back-end options: only those given on the command line (build_index rejects foreign ones).
    options = {name: getattr(args, name) for name in ("threads", "embedder", "index_type", "nlist", "batch_size")
               if getattr(args, name) is not None}
    manifest = build_index(args.input, args.out, backend=args.backend, chunk_tokens=args.chunk_tokens,
                           tokenizer=args.tokenizer, show_progress=not args.quiet, **options)
    print(f"built {manifest['backend']} index with {manifest['num_chunks']} chunks in {args.out}")
    return 0


def _cmd_index_search(args: argparse.Namespace) -> int:
    from .retrievers import load_index

    retriever = load_index(args.index, forbidden_titles=args.forbidden_titles, embedder=args.embedder)
    passages = retriever.retrieve(args.query, args.k)
    if args.json:
        print(json.dumps([p.to_dict() for p in passages], indent=2, ensure_ascii=False))
        return 0
    if not passages:
        print("no passage matched")
    for rank, p in enumerate(passages, 1):
        snippet = " ".join(p.text.split())[:200]
        print(f"{rank}. [{p.id}] {p.title}  (score {p.score:.3f})\n   {snippet}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flashback", description="FlashBack retrieval-augmented generation")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="generate text with periodic re-retrieval")
    gen.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    gen.add_argument("--index", help="index folder to retrieve from")
    gen.add_argument("--embedder", help="dense index: the embedding model to query with (default: the "
                     "packaged one or a folder inside the index)")
    add_engine_arguments(gen)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--sample-top-k", type=int, default=0, help="sample among the k most likely tokens")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--repetition-penalty", type=float, default=1.0,
                     help="> 1 discourages tokens already in the text (Hugging Face generate's meaning)")
    gen.add_argument("--no-repeat-ngram-size", type=int, default=0, help="never repeat an n-gram of this size")
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("--stream", action="store_true", help="print text as it is generated")
    gen.add_argument("--json", action="store_true", help="print the whole result as JSON")
    served = gen.add_argument_group("serving (vLLM)")
    served.add_argument("--server", default=None, metavar="URL",
                        help="drive a running `vllm serve` (http://HOST:PORT/v1) instead of loading --model")
    served.add_argument("--served-model", default=None, help="the served model's name (default: the server's first)")
    served.add_argument("--server-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="the longest one request to the server may take in all, however slowly its "
                             "answer trickles in (default: %(default)s)")
    served.add_argument("--tokenizer", default=None,
                        help="the served model's tokenizer, folder or hub id (default: the folder it serves)")
    gen.set_defaults(func=_cmd_generate)

    index = sub.add_parser("index", help="build and query retrieval indexes")
    isub = index.add_subparsers(dest="index_command", required=True, parser_class=_Parser)
    build = isub.add_parser("build", help="chunk a corpus and index it")
    build.add_argument("--input", required=True, help="file, folder, or hf:NAME[:CONFIG[:SPLIT]]")
    build.add_argument("--out", required=True, help="index folder to write")
    build.add_argument("--backend", default="bm25",
                       help="bm25 (default, embedded), lucene (pyserini + Java) or dense (faiss + embeddings)")
    build.add_argument("--chunk-tokens", type=int, default=128)
    build.add_argument("--tokenizer", default="smollm2-135m",
                       help="tokenizer that counts chunk tokens: model alias/folder/id, or 'words'")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.add_argument("--threads", type=int, help="lucene: indexing threads")
    build.add_argument("--embedder", help="dense: sentence-transformers model (default all-MiniLM-L6-v2)")
    build.add_argument("--index-type", help="dense: flat (default), hnsw or ivf")
    build.add_argument("--nlist", type=int, help="dense ivf: number of inverted lists")
    build.add_argument("--batch-size", type=int, help="dense: encoding batch size")
    build.set_defaults(func=_cmd_index_build)
    search = isub.add_parser("search", help="query an index folder")
    search.add_argument("index")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5)
    search.add_argument("--forbidden-titles", help="file with one title a line to exclude")
    search.add_argument("--embedder", help="dense index: the embedding model to query with")
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=_cmd_index_search)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="flashback: %(levelname)s: %(message)s")
    if not args.verbose:
        # transformers and friends are chatty; a user error should read as one line.
        for noisy in ("transformers", "bm25s", "sentence_transformers", "httpx", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from .cli_checks import check_arguments, output_paths

        check_arguments(args)                 # values, inputs, outputs: before any long work
        with contextlib.ExitStack() as held:
            # Each output's write lock for the whole run, not only while saving: a second run to the same
            # output is refused at its start. (Under torchrun every rank runs the command: rank 0 writes.)
            if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
                for path in output_paths(args):
                    held.enter_context(holding(path))
            return int(args.func(args) or 0)
    except FlashBackError as err:
        return _fail(str(err))
    except OSError as err:                    # a full disk, a read-only folder...: the user's to fix
        message = os_error_message(err)
        if message is None:
            raise
        return _fail(message)
    except KeyboardInterrupt:
        print("flashback: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    # One line, whatever the message holds (a library's multi-line error text included).
    print(f"flashback: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
