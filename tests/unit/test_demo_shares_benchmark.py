"""benchmarks/demo_shares.py without a model: its prompt list, intervals, summary and report tables."""

import pydoc_data.topics
import pytest

from flashback_rag.demo import DEMO_PROMPTS
from helpers import load_benchmark


def load():
    return load_benchmark("demo_shares")


def test_prompts_are_the_demos_then_distinct_pydoc_pages():
    bench = load()
    prompts = bench.all_prompts()
    assert prompts[:len(DEMO_PROMPTS)] == DEMO_PROMPTS
    topics = [t for t, _ in prompts]
    assert len(prompts) == 32 and len(set(topics)) == 32
    assert all(t in pydoc_data.topics.topics for t in topics)
    assert all(q.startswith("\n\nIn short, ") and q.endswith(" in Python is") for _, q in prompts)


def test_diff_interval_is_paired_and_brackets_the_mean():
    bench = load()
    same = [0.1, 0.5, 0.0, 0.9]
    assert bench.diff_interval(same, same, samples=300) == [0.0, 0.0, 0.0]    # paired: no spread
    point, lo, hi = bench.diff_interval([0.8, 0.0, 0.0, 0.0], [0.0] * 4, samples=300)
    assert point == 0.2 and lo == 0.0 and 0.2 <= hi <= 0.8
    point, lo, hi = bench.diff_interval([0.3, 0.4, 0.5, 0.6], [0.0] * 4, samples=300)
    assert 0.3 <= lo < point < hi <= 0.6


def report(rows):
    prompts = [("with", "q"), ("try", "q")]
    return {"command": "python benchmarks/demo_shares.py", "threads": 2, "load_average": [0.1, 0.1, 0.1],
            "settings": {"max_new_tokens": 8, "prompt_tokens": 16, "stride": 4, "doc_tokens": 8, "top_k": 1,
                         "ngram": 8},
            "prompts": prompts,
            "rows": {name: {"source": "m", "prompts": [{"copy_share": c, "repeat_share": r} for c, r in shares]}
                     for name, shares in rows.items()}}


def test_summary_compares_flashback_rows_with_prepend_only():
    bench = load()
    r = report({"none": [(0, 0.5), (0, 0.7)], "prepend": [(0, 0.4), (0, 0.2)],
                "fb": [(0.8, 0.0), (0.1, 0.2)]})
    s = bench.summarize(r, samples=200)
    assert "copy_share_minus_prepend" not in s["none"] and "copy_share_minus_prepend" not in s["prepend"]
    assert s["fb"]["mean_copy_share"] == 0.45 and s["fb"]["mean_repeat_share"] == 0.1
    assert s["fb"]["prompts_copying"] == 2 and s["fb"]["prompts_copying_quarter"] == 1
    assert s["fb"]["copy_share_minus_prepend"][0] == 0.45
    assert s["fb"]["repeat_share_minus_prepend"][0] == -0.2
    r["summary"] = s
    md = bench.markdown(r)
    assert "| fb | m | 45.0% | 10.0% | 2 / 1 | +45.0% [" in md
    assert "| try | 0% / 70% | 0% / 20% | 10% / 20% |" in md


def test_sources_need_a_name_and_a_shipped_model_or_folder(tmp_path):
    bench = load()
    assert bench.parse_sources(["a=smollm2-135m-flashback", f"b={tmp_path}"]) == [
        ("a", "smollm2-135m-flashback"), ("b", str(tmp_path))]
    for bad in (["noequals"], ["prepend=smollm2-135m-flashback"], [f"x={tmp_path / 'missing'}"],
                ["a=smollm2-135m-flashback", "a=smollm2-135m-flashback"]):
        with pytest.raises(SystemExit):
            bench.parse_sources(bad)


def test_report_says_greedy_or_sampled():
    bench = load()
    r = report({"none": [(0, 0.5), (0, 0.7)], "prepend": [(0, 0.4), (0, 0.2)]})
    r["summary"] = bench.summarize(r, samples=50)
    assert "Greedy, 8 new tokens" in bench.markdown(r)
    r["settings"]["sampling"] = {"temperature": 0.7, "top_p": 0.9, "seed": 3}
    assert "Sampled (temperature 0.7, top_p 0.9, prompt i seeded 3 + i), 8 new tokens" in bench.markdown(r)


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-0.5"], r"--temperature must be a finite number >= 0, got -0\.5"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
    (["--temperature", "0.7", "--top-p", "0"], r"--top-p must be .*, got 0\.0"),
    (["--top-p", "1.5"], r"--top-p must be .*, got 1\.5")])
def test_bad_sampling_flags_stop_before_any_model_loads(flags, message):
    with pytest.raises(SystemExit, match=message):
        load().main(flags)
