"""BM25 back-end, index folders, corpus reading and chunking."""

import json
import os

import pytest

from flashback_rag.corpus import Document, chunk_documents, chunk_text, read_documents
from flashback_rag.errors import EmptyCorpusError, FlashBackError, IndexFormatError
from flashback_rag.indexing import build_index
from flashback_rag.io_utils import atomic_directory
from flashback_rag.models import byte_level_tokenizer
from flashback_rag.retrievers import BM25Retriever, load_index, retrieve_batch

DOCS = {
    "cats.md": "# Cats\nCats are small carnivorous mammals. They purr when content and sleep most of the day.",
    "rome.txt": "Rome is the capital of Italy. The Colosseum is an ancient amphitheatre in its centre.",
    "sub/python.rst": "The with statement\n==================\nA context manager defines __enter__ and __exit__.",
}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "extra.jsonl").write_text(
        json.dumps({"title": "Volcano", "text": "A volcano erupts lava, ash and gases."}) + "\n\n"
        + json.dumps({"contents": "Untitled text about glaciers and ice."}) + "\n")
    return root


def test_read_documents_titles(corpus):
    docs = {d.title: d.text for d in read_documents(corpus)}
    assert set(docs) == {"Cats", "Volcano", "", "rome", "The with statement"}


def test_chunking_by_tokens():
    tok = byte_level_tokenizer()
    chunks = chunk_text("abcdefghij", tok, 4)
    assert chunks == ["abcd", "efgh", "ij"]
    assert chunk_text("one two three", None, 2) == ["one two", "three"]
    records = list(chunk_documents([Document("T", "abcdef"), Document("U", "gh")], tok, 4))
    assert records == [{"id": "0", "title": "T", "contents": "abcd"}, {"id": "1", "title": "T", "contents": "ef"},
                       {"id": "2", "title": "U", "contents": "gh"}]


def test_build_save_load_search(corpus, tmp_path):
    out = tmp_path / "index"
    manifest = build_index(corpus, out, tokenizer="words", chunk_tokens=64)
    assert manifest["backend"] == "bm25" and manifest["num_chunks"] == 5
    assert manifest["chunking"] == {"chunk_tokens": 64, "tokenizer": "words"}
    lines = [json.loads(line) for line in (out / "chunks.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"id", "title", "contents"}
    retriever = load_index(out)
    assert retriever.retrieve("where is the Colosseum amphitheatre", 1)[0].title == "rome"
    batch = retrieve_batch(retriever, ["cats purr", "lava ash"], 2)
    assert batch[0][0].title == "Cats" and batch[1][0].title == "Volcano"
    assert retriever.retrieve("qqqq zzzz", 3) == []


def test_forbidden_titles(corpus, tmp_path):
    build_index(corpus, tmp_path / "i", tokenizer="words")
    titles = tmp_path / "forbidden.txt"
    titles.write_text("Cats\n\n")
    retriever = load_index(tmp_path / "i", forbidden_titles=titles)
    assert load_index(tmp_path / "i").retrieve("cats purr in the capital of Italy", 1)[0].title == "Cats"
    hits = retriever.retrieve("cats purr in the capital of Italy", 3)
    assert hits and hits[0].title == "rome" and all(p.title != "Cats" for p in hits)


def test_empty_corpus(tmp_path):
    with pytest.raises(EmptyCorpusError, match="only stopwords"):
        BM25Retriever.build(["a b c", "the of"])
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(EmptyCorpusError):
        build_index(tmp_path / "empty.txt", tmp_path / "out", tokenizer="words")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(EmptyCorpusError):
        build_index(tmp_path / "nothing", tmp_path / "out", tokenizer="words")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FlashBackError, match="no such file"):
        build_index(tmp_path / "missing", tmp_path / "out", tokenizer="words")


def test_index_folder_errors(corpus, tmp_path):
    with pytest.raises(IndexFormatError, match="no index folder"):
        load_index(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(IndexFormatError, match="not a flashback index"):
        load_index(tmp_path / "plain")
    build_index(corpus, tmp_path / "i", tokenizer="words")
    (tmp_path / "i" / "manifest.json").write_text("{broken")
    with pytest.raises(IndexFormatError, match="corrupt"):
        load_index(tmp_path / "i")
    build_index(corpus, tmp_path / "j", tokenizer="words")
    with pytest.raises(IndexFormatError, match="not 'dense'"):
        from flashback_rag.retrievers.index_folder import read_manifest
        read_manifest(tmp_path / "j", backend="dense")
    (tmp_path / "j" / "chunks.jsonl").write_text("not json\n")
    with pytest.raises(IndexFormatError, match="line 1"):
        load_index(tmp_path / "j")


def test_interrupted_build_keeps_the_old_index(corpus, tmp_path):
    out = tmp_path / "i"
    build_index(corpus, out, tokenizer="words")
    before = sorted(os.listdir(out))
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out) as tmp:
            (tmp / "chunks.jsonl").write_text("half")
            raise KeyboardInterrupt
    assert sorted(os.listdir(out)) == before
    assert load_index(out).retrieve("cats", 1)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
