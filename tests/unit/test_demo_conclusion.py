"""The demo's one-line conclusion says what the numbers say, the gap to prepend included."""

from flashback_rag.demo import conclusion


def _total(fb_ppl: float, prepend_ppl: float) -> dict:
    row = {"seconds": 10.0, "prefill_tokens": 500, "ppl": 10.0}
    return {"none": {**row, "ppl": 10.2}, "once": {**row, "seconds": 10.5, "ppl": 10.1},
            "prepend": {**row, "seconds": 20.0, "prefill_tokens": 9000, "ppl": prepend_ppl},
            "flashback": {**row, "seconds": 12.0, "prefill_tokens": 2000, "ppl": fb_ppl}}


def test_a_flashback_that_reads_less_than_prepend_is_said_so():
    line = conclusion(_total(9.5, 3.3), 16)
    assert "1.20x the time of no retrieval" in line and "1.67x prepend's speed" in line
    assert "better than retrieve-once" in line
    assert "far less than prepend every 16 does (perplexity 9.50 vs 3.30)" in line


def test_level_and_better_than_prepend():
    assert "level with prepend every 16 (perplexity 3.40 vs 3.30)" in conclusion(_total(3.4, 3.3), 16)
    assert "better than prepend every 16" in conclusion(_total(2.5, 3.3), 16)
    assert "does not read the real text better than retrieve-once" in conclusion(_total(10.4, 3.3), 16)
