"""The byte-level BPE tokenizer: lossless on every string, sized as asked, HF-compatible."""

import json
import re

import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.errors import DataError
from minigpt.tokenizer import EOT, Tokenizer, bytes_to_unicode, safe_pieces


@pytest.fixture(scope="module")
def bpe(corpus_text):
    return Tokenizer.train([corpus_text], vocab_size=400)


@pytest.fixture(scope="module")
def plain_bytes(corpus_text):
    return Tokenizer.train([corpus_text], vocab_size=257)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_any_unicode(bpe, plain_bytes, s):
    for tok in (bpe, plain_bytes):
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        # per-token byte lengths add up to the UTF-8 length (the bits-per-byte denominator)
        assert int(tok.byte_lengths[ids].sum()) == len(s.encode("utf-8"))
        assert tok.decode_bytes(ids) == s.encode("utf-8")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=50), max_size=8))
def test_encode_batch_equals_encode(bpe, texts):
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


# Text made of words and every kind of whitespace run, the places where cutting text for
# separate encoding can go wrong (GPT-2's `\s+(?!\S)` splits a run before a word).
_WORDS = ["CLOWN.", "ROMEO.", "the", "world", "them?", "'tis", "I'll", "ünïcödé", "42", "--", "x"]
_SPACES = [" ", "\n", "\n\n", "\n\n\n", "  ", "\r\n", "\t", " \n", "\n ", "\u3000"]


def _wordy_text(seed: int, n: int) -> str:
    import random

    rng = random.Random(seed)
    return "".join(rng.choice(_WORDS) + rng.choice(_SPACES) for _ in range(n))


@pytest.fixture(scope="module")
def spacey_bpe():
    # trained on whitespace-rich text so that it has merges such as "\n\n" and "  "
    return Tokenizer.train([_wordy_text(0, 3000)], vocab_size=600)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_WORDS) | st.text(" \n\r\tab?é'", min_size=1, max_size=4), st.sampled_from(_SPACES)),
        min_size=5,
        max_size=80,
    ),
    st.integers(16, 40),
    st.integers(1, 30),
)
def test_safe_pieces_encode_like_the_whole_text(spacey_bpe, parts, piece_chars, feed):
    """The oracle is HF encoding the whole text at once: re-cut text must give the same ids."""
    text = "".join(w + sp for w, sp in parts)
    chunks = [text[i : i + feed] for i in range(0, len(text), feed)]
    pieces = list(safe_pieces(chunks, piece_chars))
    assert "".join(pieces) == text
    assert all(pieces)
    assert len(text) < 64 * piece_chars  # so no cut is forced (that takes 64 pieces without a safe point)
    assert [i for p in pieces for i in spacey_bpe.encode(p)] == spacey_bpe.encode(text)


def test_training_on_safe_pieces_equals_training_on_the_whole_text(spacey_bpe):
    """Pre-tokenization sees the same words, so the trainer learns the same merges. Cutting
    after a newline instead (before a blank line's second newline) changes both."""
    text = _wordy_text(0, 3000)
    pieces = list(safe_pieces([text[i : i + 50] for i in range(0, len(text), 50)], 200))
    assert len(pieces) > 50
    assert Tokenizer.train(pieces, vocab_size=600).to_str() == spacey_bpe.to_str()
    assert [i for p in pieces for i in spacey_bpe.encode(p)] == spacey_bpe.encode(text)
    # the cut this replaced: right after a newline that precedes a non-space
    ends = [m.end() for m in re.finditer(r"\n(?=\S)", text)][::40]
    naive = [text[a:b] for a, b in zip([0, *ends], [*ends, len(text)])]
    assert [i for p in naive for i in spacey_bpe.encode(p)] != spacey_bpe.encode(text)


def test_vocab_257_is_plain_bytes(plain_bytes):
    assert plain_bytes.vocab_size == 257
    s = "héllo, wörld\n"
    ids = plain_bytes.encode(s)
    assert len(ids) == len(s.encode("utf-8"))  # one token per byte
    assert all(plain_bytes.byte_lengths[i] == 1 for i in ids)


def test_vocab_size_is_256_plus_merges_plus_eot(bpe, corpus_text):
    assert bpe.vocab_size == 400
    # more merges -> fewer tokens for the same text
    assert (
        len(bpe.encode(corpus_text))
        < len(Tokenizer.train([corpus_text], 300).encode(corpus_text))
        < len(corpus_text.encode())
    )


def test_too_small_vocab_is_refused():
    with pytest.raises(DataError, match="at least 257"):
        Tokenizer.train(["abc"], vocab_size=256)


def test_gpt2_pretokenization(bpe):
    # GPT-2's regex keeps a leading space with its word and splits contractions
    assert bpe.pre_tokenize("I'll say  hello") == ["I", "'ll", "Ġsay", "Ġ", "Ġhello"]


def test_literal_eot_text_is_not_special_unless_asked(bpe):
    text = f"a{EOT}b"
    plain = bpe.encode(text)
    assert bpe.eot_id not in plain
    assert bpe.decode(plain) == text
    special = bpe.encode(text, allow_special=True)
    assert special.count(bpe.eot_id) == 1
    assert special == bpe.encode("a") + [bpe.eot_id] + bpe.encode("b")
    assert bpe.decode(special) == text  # the special token decodes to its text (not dropped)
    assert bpe.byte_lengths[bpe.eot_id] == 0


def test_save_load_is_standard_tokenizer_json(bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    again = Tokenizer.load(path)
    hf = tokenizers.Tokenizer.from_file(str(path))  # HF tools read it as is
    s = "O Romeo, Romeo! wherefore art thou Romeo?"
    assert again.encode(s) == bpe.encode(s) == hf.encode(s).ids
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    assert (path.stat().st_mode & 0o777) != 0o600  # not left private by the temporary file


def test_token_str_is_readable(bpe):
    ids = bpe.encode(" the\n")
    assert "".join(bpe.token_str(i) for i in ids) == " the\n"
    # a lone continuation byte is shown as an escape, not a replacement character
    t = Tokenizer.train(["é"], vocab_size=257)
    pieces = [t.token_str(i) for i in t.encode("é")]
    assert pieces == ["\\xc3", "\\xa9"]


def test_bytes_to_unicode_is_a_bijection_onto_printables():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256))
    assert len(set(m.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in m.values())


def test_non_byte_level_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    hf = HF(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    p = tmp_path / "t.json"
    hf.save(str(p))
    with pytest.raises(DataError, match="byte-level"):
        Tokenizer.load(p)


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        Tokenizer.load(tmp_path / "bad.json")


def test_byte_lengths_match_decoded_bytes(bpe):
    lengths = np.array([len(bpe.decode_bytes([i])) for i in range(bpe.vocab_size)])
    lengths[bpe.eot_id] = 0
    assert np.array_equal(lengths, bpe.byte_lengths)


def test_train_from_files_equals_train_from_text(tmp_path, corpus_text):
    import gzip

    plain = tmp_path / "a.txt"
    plain.write_text(corpus_text[:5000], encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write(corpus_text[5000:])
    from_files = Tokenizer.train_files([plain, tmp_path / "b.txt.gz"], vocab_size=350)
    from_text = Tokenizer.train([corpus_text[:5000], corpus_text[5000:]], vocab_size=350)
    assert from_files.to_str() == from_text.to_str()
    with pytest.raises(DataError, match="no such file"):
        Tokenizer.train_files([tmp_path / "missing.txt"], vocab_size=300)


# ---- long lines: cut points, linear work -----------------------------------------------------

# Characters that exercise every class of GPT-2's pre-tokenizer regex, including the
# whitespace Python and the pre-tokenizer disagree about (U+001C is whitespace to Python only).
_ODD = "ab1 \t\n\r\f\v'.,-é日\u3000\x1c\x85\xa0\u2028_"


@settings(max_examples=300, deadline=None)
@given(st.text(_ODD, min_size=2, max_size=14), st.data())
def test_word_end_cut_splits_words_like_the_whole_text(spacey_bpe, text, data):
    """The fallback cut (before ASCII whitespace that follows a non-space) is as exact as
    the newline rule: the oracle is HF's pre-tokenizer on the whole text."""
    from minigpt.tokenizer import _SAFE_CUT, _WORD_END

    cuts = [m.start() for rx in (_SAFE_CUT, _WORD_END) for m in rx.finditer(text) if 0 < m.start() < len(text)]
    if cuts:
        c = data.draw(st.sampled_from(cuts))
        assert spacey_bpe.pre_tokenize(text[:c]) + spacey_bpe.pre_tokenize(text[c:]) == spacey_bpe.pre_tokenize(text)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(_WORDS) | st.text("ab?é'", min_size=1, max_size=6), min_size=120, max_size=200),
    st.integers(4, 6),
    st.integers(1, 40),
)
def test_a_long_line_is_cut_between_words(spacey_bpe, words, piece_chars, feed):
    """One line far longer than the cut window, with no newline at all: pieces end before
    the space after a word, and the ids still equal encoding the whole line."""
    import minigpt.tokenizer as tok_mod

    text = " ".join(words) + "\n"
    chunks = [text[i : i + feed] for i in range(0, len(text), feed)]
    pieces = list(safe_pieces(chunks, piece_chars))
    assert "".join(pieces) == text and all(pieces)
    assert len(text) > tok_mod.CUT_WINDOW * piece_chars  # so the window runs out: the fallback is used
    assert max([len(p) for p in pieces[:-1]], default=0) <= tok_mod.CUT_WINDOW * piece_chars
    assert [i for p in pieces for i in spacey_bpe.encode(p)] == spacey_bpe.encode(text)


def test_safe_pieces_is_linear_on_a_line_without_spaces():
    """8 MB in one line with no whitespace: every search resumes where the last one found
    nothing (this took minutes when each piece rescanned the rest of the line)."""
    n, piece = 8 << 20, 1 << 10
    chunks = ("x" * (1 << 20) for _ in range(n >> 20))
    sizes = [len(p) for p in safe_pieces(chunks, piece)]
    assert sum(sizes) == n
    assert set(sizes[:-1]) == {piece}  # an arbitrary cut every piece: there is no better one


@settings(max_examples=50, deadline=None)
@given(st.text(" \nab", max_size=300), st.integers(1, 12))
def test_cut_long_runs(text, max_run):
    from minigpt.tokenizer import cut_long_runs

    pieces = list(cut_long_runs(text, max_run))
    assert "".join(pieces) == text and all(pieces)
    # no piece holds a run (of non-spaces, or of spaces) longer than max_run ...
    assert all(len(r) <= max_run for p in pieces for r in re.findall(r"\S+|\s+", p))
    # ... and a text without such runs is not cut at all
    if all(len(r) <= max_run for r in re.findall(r"\S+|\s+", text)):
        assert pieces == ([text] if text else [])


def test_training_on_a_huge_word_is_linear():
    """300K characters without a space trained in ~15 s before (quadratic in the word);
    the cut runs train in well under a second."""
    import random
    import string

    rng = random.Random(0)
    text = "".join(rng.choices(string.ascii_letters, k=300_000))
    tok = Tokenizer.train([text], vocab_size=400)
    assert tok.vocab_size == 400 and tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("v", [10**9, 2**20 + 1, 256, -1, True, "4096", 300.0])
def test_train_refuses_a_vocab_size_out_of_range(v):
    with pytest.raises(DataError, match="vocab_size"):
        Tokenizer.train(["abc"], vocab_size=v)


# ---- tokenizer.json: everything malformed is one DataError naming the file ------------------


def _valid_json(tok) -> dict:
    return json.loads(tok.to_str())


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (lambda d: '{"model": NaN}', "not valid JSON"),
        (lambda d: "[1, 2]", "expected a JSON object"),
        (lambda d: {**d, "model": {**d["model"], "type": "WordLevel"}}, "WordLevel"),
        (lambda d: {**d, "model": {**d["model"], "type": "Unigram"}}, "Unigram"),
        (lambda d: {**d, "model": "BPE"}, "model"),
        (lambda d: {**d, "pre_tokenizer": None}, "pre-tokenizer"),
        (lambda d: {**d, "pre_tokenizer": {"type": "Whitespace"}}, "pre-tokenizer"),
        (lambda d: {**d, "normalizer": {"type": "Lowercase"}}, "normalizer"),
        (lambda d: {**d, "model": {**d["model"], "dropout": 0.5}}, "dropout"),
        (lambda d: {**d, "model": {**d["model"], "vocab": {**d["model"]["vocab"], "zz": 10**8}}}, "0.."),
        (
            lambda d: {**d, "model": {**d["model"], "vocab": {**d["model"]["vocab"], "zz": 2**32 - 1}}},
            "0..",
        ),  # (HF would walk 4e9 ids)
        (
            lambda d: {
                **d,
                "model": {**d["model"], "vocab": {k: v for k, v in d["model"]["vocab"].items() if k != "a"}},
            },
            "0..",
        ),
        (lambda d: {**d, "model": {**d["model"], "vocab": [1, 2]}}, "vocab"),
        (lambda d: {**d, "model": {**d["model"], "vocab": {**d["model"]["vocab"], "zz": "7"}}}, "whole numbers"),
        (lambda d: {**d, "added_tokens": {"id": 0}}, "added_tokens"),
        (lambda d: {**d, "model": {**d["model"], "merges": [["q", "nonexistent"]]}}, "out of vocabulary"),
    ],
)
def test_malformed_tokenizer_json_is_one_error_naming_the_file(bpe, tmp_path, make, needle):
    content = make(_valid_json(bpe))
    p = tmp_path / "tokenizer.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataError) as e:
        Tokenizer.load(p)
    msg = str(e.value)
    assert str(p) in msg and needle in msg and "\n" not in msg, msg


def test_a_byte_missing_from_the_vocabulary_is_refused(bpe, tmp_path):
    """HF would silently drop a byte it has no token for; ids are renumbered densely here so
    that only the missing byte is wrong."""
    d = _valid_json(bpe)
    vocab = [k for k, _ in sorted(d["model"]["vocab"].items(), key=lambda kv: kv[1]) if k != "a"]
    d["model"]["vocab"] = {k: i for i, k in enumerate(vocab)}
    d["model"]["merges"] = []
    d["added_tokens"][0]["id"] = d["model"]["vocab"][EOT]
    with pytest.raises(DataError, match="lacks 1 of the 256 byte tokens"):
        Tokenizer.from_str(json.dumps(d))


def test_a_huge_tokenizer_file_is_refused_before_reading(tmp_path, monkeypatch):
    import minigpt.tokenizer as tok_mod

    monkeypatch.setattr(tok_mod, "MAX_TOKENIZER_BYTES", 1000)
    p = tmp_path / "tokenizer.json"
    p.write_text(" " * 2000)
    with pytest.raises(DataError, match="too large"):
        Tokenizer.load(p)
    with pytest.raises(DataError, match="too large"):
        Tokenizer.from_str(" " * 2000)


def test_not_utf8_and_directory_are_one_line(tmp_path):
    (tmp_path / "t.json").write_bytes(b'{"model": "\xff"}')
    with pytest.raises(DataError, match="not UTF-8"):
        Tokenizer.load(tmp_path / "t.json")
    with pytest.raises(DataError, match="is a directory"):
        Tokenizer.load(tmp_path)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_mutation_of_a_tokenizer_json_loads_losslessly_or_is_refused(bpe, data):
    """Replace or delete one part of a valid tokenizer.json, anywhere: the result is a
    DataError, or a tokenizer that still round-trips text. Never a panic or a traceback."""
    d = _valid_json(bpe)
    node, key = d, None
    path = []
    while True:
        keys = (
            list(node) if isinstance(node, dict) else list(range(min(len(node), 4))) if isinstance(node, list) else []
        )
        if not keys or (path and data.draw(st.booleans())):
            break
        key = data.draw(st.sampled_from(keys))
        path.append((node, key))
        node = node[key]
    parent, key = path[-1] if path else (None, None)
    if parent is None:
        d = data.draw(_JSON)
    elif isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[key]
    else:
        parent[key] = data.draw(_JSON)
    try:
        tok = Tokenizer.from_str(json.dumps(d))
    except DataError as e:
        assert "\n" not in str(e)
        return
    s = "héllo wörld <|endoftext|> \n\n x"
    assert tok.decode(tok.encode(s)) == s
    assert len(tok.byte_lengths) == tok.vocab_size


def test_encode_batch_arrays_is_one_call_per_batch(bpe, monkeypatch):
    """The data pipeline's encoder: one parallel HF call for the whole batch, the same ids
    as encoding each text."""
    texts = ["to be", "", "or not <|endoftext|> to be\n"]
    calls = []
    hf = type(bpe._hf)
    real = hf.encode_batch_fast
    monkeypatch.setattr(hf, "encode_batch_fast", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    arrays = bpe.encode_batch_arrays(texts, dtype=np.uint16)
    assert len(calls) == 1
    assert [a.tolist() for a in arrays] == [bpe.encode(t) for t in texts]
    assert all(a.dtype == np.uint16 for a in arrays)


# ---- GPT-2's original files: vocab.json + merges.txt -------------------------------------------


def write_vocab_merges(tok: Tokenizer, d) -> None:
    """The pair of files OpenAI released GPT-2's tokenizer as, for `tok`: vocab.json (token
    -> id) and merges.txt ("#version: 0.2", then "a b" per line, in learned order)."""
    model = json.loads(tok.to_str())["model"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


TEXTS = ["Thou art my sweet rose.", "  héllo\n\tworld — 123", "", "to be, or not to be<|endoftext|>", "a\n\nb  c"]


def test_vocab_and_merges_load_as_the_same_tokenizer_transformers_reads(bpe, tmp_path):
    """GPT-2's two original files give the tokenizer its tokenizer.json gives, and
    transformers' own pure-Python GPT-2 tokenizer (an independent BPE implementation)
    reading the same two files encodes every text alike."""
    transformers = pytest.importorskip("transformers")
    write_vocab_merges(bpe, tmp_path / "gpt2")
    for path in (tmp_path / "gpt2", tmp_path / "gpt2" / "vocab.json"):  # the directory, or vocab.json itself
        tok = Tokenizer.load(path)
        assert tok.vocab_size == bpe.vocab_size and tok.eot_id == bpe.eot_id
    slow = transformers.GPT2Tokenizer(str(tmp_path / "gpt2" / "vocab.json"), str(tmp_path / "gpt2" / "merges.txt"))
    for s in TEXTS:
        assert tok.encode(s) == bpe.encode(s)
        assert tok.decode(tok.encode(s)) == s
        if EOT not in s:  # (the slow tokenizer treats a literal <|endoftext|> as the special token)
            assert slow.encode(s) == tok.encode(s), s
    # A directory with a tokenizer.json prefers it.
    bpe.save(tmp_path / "gpt2" / "tokenizer.json")
    assert Tokenizer.load(tmp_path / "gpt2").to_str() == bpe.to_str()


@pytest.mark.parametrize(
    "how",
    [
        "merge-of-unknown-token",
        "three-part-merge",
        "vocab-not-object",
        "vocab-missing-bytes",
        "merges-not-utf8",
        "empty-dir",
    ],
)
def test_bad_vocab_or_merges_is_one_clear_error(bpe, tmp_path, how):
    d = tmp_path / "gpt2"
    write_vocab_merges(bpe, d)
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    needle = {
        "merge-of-unknown-token": "line 2",
        "three-part-merge": "line 2",
        "vocab-not-object": "token -> integer id",
        "vocab-missing-bytes": "byte tokens",
        "merges-not-utf8": "not UTF-8",
        "empty-dir": "no tokenizer.json",
    }[how]
    if how == "merge-of-unknown-token":
        (d / "merges.txt").write_text("#version: 0.2\nzzq qqz\n", encoding="utf-8")
    elif how == "three-part-merge":
        (d / "merges.txt").write_text("#version: 0.2\nĠ t h\n", encoding="utf-8")
    elif how == "vocab-not-object":
        (d / "vocab.json").write_text(json.dumps(list(vocab)), encoding="utf-8")
    elif how == "vocab-missing-bytes":
        keep = {k: v for k, v in vocab.items() if v < 100}
        (d / "vocab.json").write_text(json.dumps(keep), encoding="utf-8")
        (d / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    elif how == "merges-not-utf8":
        (d / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe t\n")
    else:
        (d / "vocab.json").unlink()
        (d / "merges.txt").unlink()
    with pytest.raises(DataError, match=needle) as e:
        Tokenizer.load(d)
    assert len(str(e.value).splitlines()) == 1
