"""The real-retrieval speed benchmark and the trade-off benchmark, end to end on SmolLM2 and a small corpus.

The benchmarks read the quality benchmark's corpus (the Python docs from a Debian package); here its
split is replaced by pydoc topic pages, so the test needs nothing from the network.
"""

import json

import pytest
from helpers import load_benchmark

pytestmark = pytest.mark.integration

VALIDATION = ["try", "import", "function"]


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    from flashback_rag.stdlib_corpus import pydoc_topic_documents

    real = load_benchmark("real_retrieval")
    tradeoff = load_benchmark("tradeoff")
    regimes = real.sibling("regimes")          # the instance both scripts load
    assert tradeoff.sibling("regimes") is regimes
    docs = list(pydoc_topic_documents())
    parts = {"validation": [d for d in docs if d.title in VALIDATION],
             "train": [d for d in docs if d.title in ("with", "for")],
             "index": [d for d in docs if d.title not in VALIDATION + ["with", "for"]]}
    work = tmp_path_factory.mktemp("regimes")
    saved = regimes.corpus, regimes.default_work
    regimes.corpus = lambda work=None, seed=42: (parts, "pydoc topics")
    regimes.default_work = lambda: work
    yield real, tradeoff
    regimes.corpus, regimes.default_work = saved


def test_real_retrieval_records_resumes_and_summarizes(benchmarks, tmp_path, capsys):
    real, _ = benchmarks
    argv = ["--T", "224", "--new-tokens", "32", "--pages", "1", "--strides", "16", "once", "--regimes", "copy",
            "--name", "r", "--out", str(tmp_path)]
    assert real.main(argv) == 0
    records = real.read_records(tmp_path / "r.jsonl")
    # none, prepend x 2 strides, FlashBack x 2 strides, FlashBack re-inserting at 16: x 2 protocols
    assert len(records) == 12
    report = json.loads((tmp_path / "r.json").read_text())
    cells = {(c["protocol"], c["stride"]): c for c in report["cells"]}
    assert set(cells) == {("free", "16"), ("free", "once"), ("replay", "16"), ("replay", "once")}
    replay = cells[("replay", "16")]
    # replay: both rows read the same text, so they retrieved the same passages at the same points
    assert replay["prepend_changed"] == replay["flashback_changed"]
    assert replay["flashback_prefill"] < replay["prepend_prefill"]
    assert replay["flashback_prefill"] <= replay["reinsert_prefill"]
    assert {"prepend_ppl", "flashback_ppl", "none_ppl"} <= set(replay)
    assert cells[("replay", "once")]["prepend_changed"] == 1.0          # one retrieval, a new block
    assert "Protocol `replay`" in capsys.readouterr().out
    assert real.main(argv) == 0                                          # a rerun resumes: nothing new
    assert len(real.read_records(tmp_path / "r.jsonl")) == 12


def test_tradeoff_scores_every_row_on_the_same_tokens(benchmarks, tmp_path):
    real, tradeoff = benchmarks
    assert real.main(["--T", "192", "--new-tokens", "32", "--pages", "1", "--strides", "16", "once", "--regimes",
                      "copy", "--protocols", "replay", "--name", "s", "--out", str(tmp_path)]) == 0
    assert tradeoff.main(["--prefix", "64", "--span", "32", "--windows", "2", "--strides", "16", "32",
                          "--regimes", "copy", "--speed", str(tmp_path / "s.json"), "--speed-T", "192",
                          "--work", str(tmp_path / "work"), "--out", str(tmp_path), "--name", "t",
                          "--bootstrap", "200"]) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    rows = {e["key"]: e for e in report["results"]}
    assert set(rows) == {"none", "prepend_once", "flashback_once", "prepend_s16", "flashback_s16", "prepend_s32",
                         "flashback_s32", "flashback_reinsert_s16", "flashback_after_s16"}
    assert all(e["tokens"] == 64 for e in rows.values())                # 2 windows x 32 scored tokens
    assert rows["prepend_once"]["ratio_prepend_once"][0] == pytest.approx(1.0)
    assert "ratio_flashback_same_stride" in rows["flashback_reinsert_s16"]
    assert "s_per_token" in rows["flashback_s16"] and "s_per_token" in rows["prepend_once"]
    assert (tmp_path / "t.md").is_file() and (tmp_path / "t.png").is_file()
