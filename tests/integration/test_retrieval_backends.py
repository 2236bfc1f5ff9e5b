"""The Lucene (pyserini + JVM) and dense (MiniLM + faiss) back-ends, for real, on a small real corpus.

One index per back-end per module (JVM start and model load are the slow parts).
"""

import json
import shutil

import pytest
from helpers import PYDOC_TOPICS

from flashback_rag.cli import main
from flashback_rag.errors import FlashBackError, IndexFormatError
from flashback_rag.indexing import build_index
from flashback_rag.retrieve import retrieve_documents
from flashback_rag.retrievers import load_index, read_manifest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus(pydoc_topics_jsonl):
    return pydoc_topics_jsonl


@pytest.fixture(scope="module", params=["lucene", "dense"])
def index(request, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "index"
    build_index(corpus, out, backend=request.param, tokenizer="words", chunk_tokens=64)
    return out


def _chunks(folder):
    return [json.loads(line) for line in (folder / "chunks.jsonl").read_text().splitlines()]


def test_reload_and_find_the_source_chunk_first(index):
    manifest = read_manifest(index)
    assert manifest["chunking"] == {"chunk_tokens": 64, "tokenizer": "words"}
    retriever = load_index(index)
    chunks = _chunks(index)
    assert len(retriever) == len(chunks) == manifest["num_chunks"] > len(PYDOC_TOPICS)
    picked = chunks[:: max(1, len(chunks) // 6)]
    # A 30-word span of a chunk (BM25) / the chunk itself (dense: a sanity check, not a quality claim).
    queries = [" ".join(c["contents"].split()[10:40]) if manifest["backend"] == "lucene" else c["contents"]
               for c in picked]
    batched = retriever.retrieve_batch(queries, 3)
    assert [hits[0].id for hits in batched] == [c["id"] for c in picked]
    first = retriever.retrieve(queries[0], 3)
    assert [p.id for p in first] == [p.id for p in batched[0]]
    assert first[0].text == picked[0]["contents"] and first[0].title == picked[0]["title"]
    assert first[0].score >= first[1].score >= first[2].score


def test_forbidden_titles_excluded(index, tmp_path):
    titles = tmp_path / "forbid.txt"
    titles.write_text("with\nclass\n")
    retriever = load_index(index, forbidden_titles=titles)
    hits = retriever.retrieve("the with statement calls the context manager's __enter__ method", 6)
    assert len(hits) == 6 and not {p.title for p in hits} & {"with", "class"}


def test_search_cli_and_records(index, tmp_path, capsys):
    assert main(["index", "search", str(index), "while loop condition", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and hits[0]["title"] == "while"
    from flashback_rag.corpus import Document

    doc = Document(title="for", text=" ".join(_chunks(index)[0]["contents"].split()[:48]))
    points = next(retrieve_documents(load_index(index), [doc], tokenizer=None, stride=16, query_tokens=16,
                                     top_k=2, exclude_own_title=True)).points
    assert [p.position for p in points] == [16, 32] and all(len(p.passages) == 2 for p in points)
    assert all(passage.title != "for" for p in points for passage in p.passages)


def test_damaged_folder_gives_one_clear_error(index, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(index, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "num_chunks": manifest["num_chunks"] + 1}))
    with pytest.raises(IndexFormatError, match="manifest says"):
        load_index(broken)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    state = broken / manifest["backend"]
    for file in state.iterdir():          # truncate every state file: the index is unreadable
        file.write_bytes(file.read_bytes()[:20])
    with pytest.raises(IndexFormatError, match="cannot"):
        load_index(broken)


def test_interrupted_build_leaves_no_half_index(index, corpus, tmp_path):
    backend = read_manifest(index)["backend"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(corpus.read_text() + "{not json\n")
    with pytest.raises(FlashBackError, match="line 9"):
        build_index(bad, tmp_path / "new", backend=backend, tokenizer="words")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]
