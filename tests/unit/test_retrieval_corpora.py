"""Corpora (HF datasets, WikiText), retrieval records, index-folder failures and CLI errors (fast: bm25)."""

import json

import pytest

from flashback_rag.cli import main
from flashback_rag.corpus import Document, read_documents
from flashback_rag.errors import FlashBackError, IndexFormatError, MissingDependencyError
from flashback_rag.hf_corpus import parse_hf_spec
from flashback_rag.indexing import build_index
from flashback_rag.retrieval_records import load_records, read_records, write_records
from flashback_rag.retrieve import retrieve_documents
from flashback_rag.retrievers import BM25Retriever, load_index

WIKITEXT_LINES = ["", " = Alpha Article = \n", "", " Alpha was founded by sailors in the north . \n",
                  " = = History = = \n", " The sailors built a harbour of granite . \n", "",
                  " = Beta Thing = \n", "", " Beta is a mountain covered in pine forests . \n"]


@pytest.fixture(scope="module")
def corpus(pydoc_topics_jsonl):
    return pydoc_topics_jsonl


@pytest.fixture(scope="module")
def bm25_index(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "bm25"
    build_index(corpus, out, tokenizer="words", chunk_tokens=64)
    return out


def test_wikitext_saved_dataset_keeps_article_titles(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": WIKITEXT_LINES}),
                          "test": datasets.Dataset.from_dict({"text": WIKITEXT_LINES[:6]})}
                         ).save_to_disk(str(tmp_path / "wt"))
    docs = list(read_documents(tmp_path / "wt"))              # a plain folder path works
    assert [d.title for d in docs] == ["Alpha Article", "Beta Thing"]
    assert "= = History = =" in docs[0].text and "granite" in docs[0].text
    assert [d.title for d in read_documents(f"hf:{tmp_path / 'wt'}:test")] == ["Alpha Article"]
    with pytest.raises(FlashBackError, match="no split 'dev'"):
        list(read_documents(f"hf:{tmp_path / 'wt'}:dev"))


def test_dataset_with_title_column_and_index_build(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"title": ["Cats", "Dogs"], "text": ["Cats purr softly.", "Dogs bark loudly."]}
                               ).save_to_disk(str(tmp_path / "pets"))
    build_index(f"hf:{tmp_path / 'pets'}", tmp_path / "idx", tokenizer="words")
    assert load_index(tmp_path / "idx").retrieve("why do dogs bark", 1)[0].title == "Dogs"


def test_hf_spec_parsing():
    assert parse_hf_spec("hf:wikitext:wikitext-103-raw-v1:test").split == "test"
    assert parse_hf_spec("hf:imdb").config is None
    with pytest.raises(FlashBackError):
        parse_hf_spec("hf:a:b:c:d")


def test_forbidden_titles_and_records_round_trip(bm25_index, tmp_path):
    retriever = load_index(bm25_index)
    query = "context manager __enter__ __exit__ with statement"
    assert retriever.retrieve(query, 1)[0].title == "with"
    titles = tmp_path / "forbid.txt"
    titles.write_text("with\n")
    retriever = load_index(bm25_index, forbidden_titles=titles)
    hits = retriever.retrieve(query, 5)
    assert hits and all(p.title != "with" for p in hits)

    doc = Document(title="while", text=" ".join(["the while loop repeats while the expression is true"] * 4))
    docs = list(retrieve_documents(load_index(bm25_index), [doc], tokenizer=None, stride=8, query_tokens=8,
                                   top_k=2, exclude_own_title=True))
    assert [p.position for p in docs[0].points] == [8, 16, 24, 32]
    assert all(p.title != "while" for pt in docs[0].points for p in pt.passages)
    path = tmp_path / "records.jsonl"
    write_records(path, {"tokenizer": "words", "stride": 8}, docs)
    header, back = load_records(path)
    assert header["stride"] == 8 and back[0].text == doc.text
    assert [[p.id for p in pt.passages] for pt in back[0].points] == [[p.id for p in pt.passages]
                                                                      for pt in docs[0].points]
    path.write_text('{"type": "header"}\n')
    with pytest.raises(FlashBackError, match="not a retrieval records file"):
        read_records(path)


def test_interrupted_build_leaves_no_half_index(corpus, bm25_index, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(corpus.read_text() + "{not json\n")        # fails after the good documents
    with pytest.raises(FlashBackError, match="line 9"):
        build_index(bad, tmp_path / "new", tokenizer="words")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]   # no temporary folder left
    # Rebuilding over an existing index and failing keeps the old one.
    old = tmp_path / "old"
    build_index(corpus, old, tokenizer="words", chunk_tokens=64)
    with pytest.raises(FlashBackError):
        build_index(bad, old, tokenizer="words")
    assert len(load_index(old)) == len(load_index(bm25_index))


def test_corrupt_or_mismatched_folder_gives_one_clear_error(bm25_index, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bm25_index, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "backend": "dense"}))
    from flashback_rag.retrievers.bm25 import BM25Retriever as B

    with pytest.raises(IndexFormatError, match="is a 'dense' index, not 'bm25'"):
        B.load(broken)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    lines = (broken / "chunks.jsonl").read_text().splitlines()
    (broken / "chunks.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IndexFormatError, match="chunks"):
        load_index(broken)
    (broken / "manifest.json").write_text("{truncated")
    with pytest.raises(IndexFormatError, match="corrupt"):
        load_index(broken)


def test_cli_errors_exit_2(bm25_index, corpus, tmp_path, capsys):
    assert main(["index", "build", "--input", str(corpus), "--out", str(tmp_path / "x"),
                 "--backend", "nope"]) == 2
    assert main(["index", "build", "--input", str(corpus), "--out", str(tmp_path / "x"),
                 "--embedder", "m", "--tokenizer", "words"]) == 2
    assert main(["index", "search", str(tmp_path), "query"]) == 2
    assert main(["retrieve", "--index", str(bm25_index), "--input", str(tmp_path / "missing.txt"),
                 "--out", str(tmp_path / "r.jsonl"), "--tokenizer", "words"]) == 2
    err = capsys.readouterr().err
    assert err.count("flashback: error:") == 4 and "no option embedder" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "r.jsonl").exists()


def test_cli_retrieve_writes_records(bm25_index, tmp_path, capsys):
    out = tmp_path / "records.jsonl"
    text = "a class definition defines a class object and its suite is executed in a new frame " * 3
    assert main(["retrieve", "--index", str(bm25_index), "--input", text, "--stride", "8",
                 "--query-tokens", "16", "--top-k", "2", "--tokenizer", "words", "--out", str(out),
                 "--quiet"]) == 0
    header, docs = load_records(out)
    assert header["backend"] == "bm25" and header["top_k"] == 2
    assert [p.position for p in docs[0].points] == list(range(8, docs[0].num_tokens, 8))
    assert docs[0].points[0].passages[0].title == "class"


def test_java_home_checks(tmp_path, monkeypatch):
    from flashback_rag.retrievers import jvm

    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nope"))
    with pytest.raises(MissingDependencyError, match="JAVA_HOME=.* is not usable"):
        jvm.find_java_home()
    old = tmp_path / "jdk8"
    (old / "lib" / "server").mkdir(parents=True)
    (old / "lib" / "server" / "libjvm.so").write_bytes(b"")
    (old / "release").write_text('JAVA_VERSION="1.8.0_392"\n')
    assert "Java 8" in jvm.check_java_home(old)
    (old / "release").write_text('JAVA_VERSION="17.0.9"\n')
    assert jvm.check_java_home(old) is None


def test_hybrid_fuses_and_filters(bm25_index):
    from flashback_rag.retrievers import HybridRetriever

    a = load_index(bm25_index)
    chunks = [json.loads(line) for line in (bm25_index / "chunks.jsonl").read_text().splitlines()]
    b = BM25Retriever.build([c["contents"] for c in chunks], titles=[c["title"] for c in chunks],
                            ids=[c["id"] for c in chunks], stemmer=None)
    hybrid = HybridRetriever([a, b])
    query = "context manager __enter__ __exit__ with statement"
    top = hybrid.retrieve_batch([query, "while loop"], 3)
    assert top[0][0].id == a.retrieve(query, 1)[0].id and top[1][0].title == "while"
    assert top[0][0].score == pytest.approx(2 / 61)            # first in both lists
    hybrid.set_forbidden_titles({"with"})
    assert all(p.title != "with" for p in hybrid.retrieve(query, 5))
