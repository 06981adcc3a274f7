"""The byte-level BPE tokenizer against Hugging Face's GPT2TokenizerFast (an independent implementation).

No GPT-2 vocabulary is downloaded: the vocabularies are trained here, once by the `tokenizers` library
and once by pocketgpt, and each is loaded by both implementations.
"""

from __future__ import annotations

import pytest
from transformers import GPT2TokenizerFast

from pocketgpt.data import read_text
from pocketgpt.tokenizers.bpe import BPETokenizer, byte_alphabet, train_bpe

SHAKESPEARE = read_text("shakespeare")[0]
CORPUS = [
    SHAKESPEARE,
    "Héllo wörld! naïve café, “quotes” — and ‘apostrophes’; ½ ² Ⅻ ٣",
    "emoji 😀🎉👩‍👩‍👧 flags 🇫🇷 and symbols ∑∫√ ≠ ≤",
    "digits 0 12 345 6789 3.14159 1,000,000 2026-11-29",
    "runs\tof\t\twhitespace   and\n\n\nnewlines  \n  trailing   ",
    "日本語のテキスト 한국어 العربية עברית ελληνικά русский",
    "zero\u200bwidth and \u202ebidi\u202c controls",
    "contractions: don't we'll I'd they've you're it's 'S 'LL",
    "a special <|endoftext|> token in the middle<|endoftext|>",
]


@pytest.fixture(scope="module")
def hf_trained(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("hf_bpe")
    t = ByteLevelBPETokenizer()
    t.train_from_iterator([SHAKESPEARE], vocab_size=1000, special_tokens=["<|endoftext|>"], show_progress=False)
    t.save_model(str(folder))
    return folder


@pytest.fixture(scope="module")
def ours_trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("our_bpe")
    train_bpe(SHAKESPEARE[:300_000], vocab_size=600).save(folder)
    return folder


@pytest.mark.parametrize("which", ["hf_trained", "ours_trained"])
def test_encode_and_decode_match_gpt2_tokenizer_fast(which, request):
    folder = request.getfixturevalue(which)
    ours = BPETokenizer.load(folder / "vocab.json", folder / "merges.txt")
    fast = GPT2TokenizerFast.from_pretrained(folder)
    for text in CORPUS:
        ids = ours.encode(text)
        assert ids == fast(text)["input_ids"], text[:40]
        assert ours.decode(ids) == fast.decode(ids) == text


def test_byte_alphabet_is_gpt2s():
    table = byte_alphabet()
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert len(set(table.values())) == 256


def test_training_compresses_and_is_deterministic():
    text = SHAKESPEARE[:100_000]
    a, b = train_bpe(text, 400), train_bpe(text, 400)
    assert a.merges == b.merges and a.vocab_size == 400
    assert len(a.encode(text)) < 0.6 * len(text.encode("utf-8"))
    assert a.vocab["<|endoftext|>"] == 399


def test_decode_of_a_partial_character_uses_the_replacement_character():
    tok = train_bpe("abc", 257)
    ids = tok.encode("é")  # two bytes, two tokens
    assert len(ids) == 2 and tok.decode(ids[:1]) == "\ufffd" and tok.decode(ids) == "é"


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "vocab.json").write_text("[1, 2]")
    (tmp_path / "merges.txt").write_text("a b c\n")
    with pytest.raises(ValueError, match="must map token strings"):
        BPETokenizer.load(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(ValueError, match="merges.txt:1: a merge is two tokens"):
        BPETokenizer.load(tmp_path / "vocab.json", tmp_path / "merges.txt")
    with pytest.raises(ValueError, match="missing"):
        BPETokenizer.load(tmp_path / "nope.json", tmp_path / "merges.txt")


def test_cli_trains_a_tokenizer_and_a_model_that_uses_it(tmp_path, capsys):
    import json

    from pocketgpt.cli import main

    text = tmp_path / "corpus.txt"
    text.write_text(SHAKESPEARE[:20_000], encoding="utf-8")
    assert main(["tokenizer", "train", str(text), "--vocab-size", "300", "--out", str(tmp_path / "tok"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["vocab_size"] == 300 and summary["chars_per_token"] > 1.3
    assert main(["train", "--data", str(text), "--mode", "text", "--preset", "shakespeare-cpu", "--tokenizer",
                 str(tmp_path / "tok"), "--steps", "3", "--batch-size", "2", "--out", str(tmp_path / "m"),
                 "--samples", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["steps"] == 3
    assert main(["sample", str(tmp_path / "m"), "--prompt", "KING", "--max-tokens", "4", "--count", "1"]) == 0
    assert main(["tokenizer", "train", str(text), "--vocab-size", "100", "--out", str(tmp_path / "t2")]) == 2
