"""Datasets, modes, splits, the character tokenizer and resumable batches."""

from __future__ import annotations

import numpy as np
import pytest

from pocketgpt.data import DataError
from pocketgpt.tokenizers import CharTokenizer, UnknownCharacterError
from pocketgpt.train import Batches, eval_batches, load_dataset, pad_documents


def test_names_dataset_in_lines_mode():
    ds = load_dataset("names")
    assert ds.mode == "lines" and ds.tokenizer.vocab_size == 27 and ds.tokenizer.bos == 26
    assert len(ds.train) + len(ds.val) == 32033 and len(ds.val) == 32033 - int(0.9 * 32033)
    assert all(d[0] == 26 and d[-1] == 26 for d in ds.train[:100])


def test_shakespeare_in_text_mode_has_a_fixed_90_10_split():
    ds = load_dataset("shakespeare")
    assert ds.mode == "text" and ds.tokenizer.vocab_size == 65 and ds.tokenizer.bos is None
    assert len(ds.train) == int(0.9 * 1115394) and len(ds.train) + len(ds.val) == 1115394
    assert ds.tokenizer.decode(ds.train[:14]) == "First Citizen:"


def test_user_file_in_both_modes(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("héllo\nwörld\n\nagain\n", encoding="utf-8")
    lines = load_dataset(str(f))
    assert lines.mode == "lines" and len(lines.train) + len(lines.val) == 3
    text = load_dataset(str(f), mode="text")
    assert text.tokenizer.decode(np.concatenate([text.train, text.val])) == "héllo\nwörld\n\nagain\n"


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_dataset(str(empty))


def test_unknown_character_names_the_character():
    tok = CharTokenizer("abc", bos=True)
    with pytest.raises(UnknownCharacterError, match="'Z'"):
        tok.encode("abZ")
    assert tok.decode(tok.encode("cab") + [tok.bos]) == "cab"
    assert CharTokenizer.from_dict(tok.to_dict()).encode("cab") == tok.encode("cab")


def test_pad_documents_masks_padding_and_cuts_long_documents():
    x, y, w = pad_documents([np.array([9, 1, 2, 9]), np.array([9, 3, 9]), np.arange(30)], block_size=5, pad=9)
    assert x.shape == (3, 5)
    assert w.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert y[2].tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("data", ["names", "shakespeare"])
def test_batches_resume_from_their_state(data):
    ds = load_dataset(data)
    a = Batches(ds, batch_size=4, block_size=16, seed=3)
    for _ in range(5):
        a.next()
    b = Batches(ds, batch_size=4, block_size=16, seed=3)
    b.load_state(a.state())
    for _ in range(3):
        for u, v in zip(a.next(), b.next()):
            np.testing.assert_array_equal(u, v)


def test_eval_batches_cover_the_validation_split_once():
    ds = load_dataset("shakespeare")
    n = sum(int(w.sum()) for _, _, w in eval_batches(ds, block_size=64))
    assert n == (len(ds.val) - 1) // 64 * 64
    names = load_dataset("names")
    n = sum(int(w.sum()) for _, _, w in eval_batches(names, block_size=16))
    assert n == sum(min(len(d) - 1, 16) for d in names.val)
