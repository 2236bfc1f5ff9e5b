"""The command line: happy paths on tiny models, and one clear line + exit 2 for every user error."""

import json

import pytest

from flashback_rag.cli import main


@pytest.fixture
def index_dir(tmp_path):
    src = tmp_path / "docs.md"
    src.write_text("# Cats\nCats purr when content.\n\nDogs bark at night and guard houses.")
    out = tmp_path / "idx"
    assert main(["index", "build", "--input", str(src), "--out", str(out), "--tokenizer", "words",
                 "--chunk-tokens", "5", "--quiet"]) == 0
    return out


def test_index_build_and_search(index_dir, capsys):
    capsys.readouterr()
    assert main(["index", "search", str(index_dir), "dogs bark", "-k", "1", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 1 and "bark" in hits[0]["text"]


def test_generate_json_and_stream(index_dir, capsys):
    capsys.readouterr()
    args = ["generate", "--model", "tiny-random-llama", "--index", str(index_dir), "--stride", "4",
            "--doc-tokens", "16", "--max-new-tokens", "8", "cats purr"]
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pattern"] == "append" and result["retrievals"] and "tokens_per_second" in result["stats"]
    assert main(args + ["--stream"]) == 0
    assert "retrievals" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "no-such-model", "--pattern", "none", "hi"], "unknown model 'no-such-model'"),
    (["generate", "--model", "nobody-owns/this-model-xyz", "--pattern", "none", "hi"], "this-model-xyz"),
    (["generate", "--model", "/nonexistent/model.gguf", "--pattern", "none", "hi"], "no such GGUF file"),
    (["generate", "--model", "tiny-random-llama", "--index", "/nonexistent/idx", "hi"], "no index folder"),
    (["generate", "--model", "tiny-random-llama", "hi"], "needs --index"),
    (["generate", "--model", "tiny-random-llama", "--stride", "0", "--pattern", "none", "hi"], "--stride must be"),
    (["generate", "--model", "tiny-random-llama", "--query-tokens", "-3", "--pattern", "none", "hi"], "--query-tokens"),
    (["generate", "--model", "tiny-random-llama", "--doc-tokens", "0", "--pattern", "none", "hi"], "--doc-tokens"),
    (["generate", "--pattern", "sideways", "hi"], "invalid choice"),
    (["index", "search", "/nonexistent/idx", "q"], "no index folder"),
    (["index", "build", "--input", "/nonexistent/file.txt", "--out", "/tmp/x-never", "--tokenizer", "words"],
     "no such file"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_info:      # argparse rejects bad choices itself, with the same format
        code = exit_info.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and err.startswith("flashback: error:")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_corrupt_index_and_empty_corpus(tmp_path, index_dir, capsys):
    (index_dir / "manifest.json").write_text("{")
    assert main(["index", "search", str(index_dir), "q"]) == 2
    assert "corrupt" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["index", "build", "--input", str(empty), "--out", str(tmp_path / "o"), "--tokenizer", "words"]) == 2
    assert "no text" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
