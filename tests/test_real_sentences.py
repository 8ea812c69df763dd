"""Real sentences from Python's own docs and sources: cutting, filtering, split, determinism, CLI."""
import hashlib
import re
import subprocess
import sys

import pytest

from openclip_distill.data import real_sentences as rs
from openclip_distill.errors import DistillUsageError


def test_split_sentences_cuts_at_sentence_ends_but_not_abbreviations():
    text = ("Return the value. It may be None, e.g. When nothing matched!\n"
            "Second line of the same paragraph?  Yes.\n\nA new paragraph starts here.")
    assert rs.split_sentences(text) == [
        "Return the value.",
        "It may be None, e.g. When nothing matched!",
        "Second line of the same paragraph?",
        "Yes.",
        "A new paragraph starts here.",
    ]


@pytest.mark.parametrize("raw, expected", [
    ("* Return the number of items in the queue.", "Return the number of items in the queue."),
    ("1. The server closes the connection after a timeout.", "The server closes the connection after a timeout."),
    ("Too short here.", None),                                         # < 5 words / 30 chars
    ("return the number of items in the queue.", None),                # lower-case start
    ("Return the number of items in the queue", None),                 # no final punctuation
    (">>> print(x) prints the number of items.", None),                # code
    ("Set x = 3 before calling the function again.", None),            # code marker '='
    ("Call foo(bar) before calling the function again.", None),        # call syntax
    ("See https://example.org for the full list of options.", None),   # URL
    ("Values 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 are all valid.", None),  # mostly digits
    ("Word " * 45 + "end.", None),                                     # too many words
])
def test_clean_sentence(raw, expected):
    assert rs.clean_sentence(raw) == expected


def test_docstrings_and_comment_blocks_are_read_without_importing():
    source = (
        '"""Module doc."""\n'
        "import sys  # not a block start\n"
        "# First line of a block\n"
        "# second line of it.\n"
        "\n"
        "# Another block.\n"
        "class A:\n"
        '    """Class doc."""\n'
        "    def f(self):\n"
        '        """Method doc."""\n'
        "        raise SystemExit('never run')\n")
    assert rs.docstrings_of(source) == ["Module doc.", "Class doc.", "Method doc."]
    assert rs.comment_blocks_of(source) == [
        "not a block start First line of a block second line of it.", "Another block."]
    assert rs.docstrings_of("def broken(:\n") == []


def _h(s):
    return int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:8], "big")


def test_split_is_disjoint_hash_based_and_stable_when_sentences_are_added():
    sentences = [f"Sentence number {i} talks about a different thing." for i in range(4000)]
    train, heldout = rs.split_train_heldout(sentences, 0.1)
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(sentences)
    # independent reference of the rule
    assert set(heldout) == {s for s in sentences if _h(s) % 10**6 < 100_000}
    assert 300 <= len(heldout) <= 500  # ~10% of 4000
    assert [_h(s) for s in train] == sorted(_h(s) for s in train)
    more_train, more_heldout = rs.split_train_heldout(sentences + ["An extra sentence that was added later on."], 0.1)
    assert set(heldout) <= set(more_heldout) and set(train) <= set(more_train)
    with pytest.raises(DistillUsageError, match="--heldout-fraction"):
        rs.split_train_heldout(sentences, 1.5)


def _looks_like_sentence(s):
    return (rs.MIN_CHARS <= len(s) <= rs.MAX_CHARS and s[0].isupper() and s[-1] in ".!?"
            and "\n" not in s and s == s.strip() and "  " not in s)


def test_python_docs_are_deterministic_disjoint_and_look_like_sentences():
    first = rs.real_sentences(0.1, sources=("python-docs",))
    second = rs.real_sentences(0.1, sources=("python-docs",))
    assert first == second
    train, heldout = first
    assert len(train) > 500 and len(heldout) > 50
    assert not set(train) & set(heldout)
    assert len({s.lower() for s in train + heldout}) == len(train) + len(heldout)
    assert all(_looks_like_sentence(s) for s in train + heldout)
    # mostly ordinary English words
    words = re.findall(r"[A-Za-z]+", " ".join(train))
    common = {"the", "a", "is", "of", "to", "and", "in", "that", "it", "be"}
    assert sum(w.lower() in common for w in words) > 0.15 * len(words)


def test_all_default_sources_give_thousands_of_sentences():
    sentences, per_source = rs.collect_sentences()
    assert set(per_source) == set(rs.SOURCES)
    assert all(n > 500 for n in per_source.values()), per_source
    assert len(sentences) > 10_000
    assert len(set(sentences)) == len(sentences)


def test_unknown_package_and_source_are_usage_errors():
    with pytest.raises(DistillUsageError, match="--packages"):
        rs.collect_sentences(sources=(), packages=("no_such_package_xyz",))
    with pytest.raises(DistillUsageError, match="unknown sentence source"):
        rs.collect_sentences(sources=("wikipedia",))


def test_cli_writes_train_and_heldout(tmp_path):
    out = tmp_path / "sent"
    proc = subprocess.run([sys.executable, "-m", "openclip_distill.data.real_sentences", "--out", str(out),
                           "--sources", "python-docs", "--heldout-fraction", "0.1"],
                          capture_output=True, text=True, check=True)
    train = (out / "train.txt").read_text(encoding="utf-8").splitlines()
    heldout = (out / "heldout.txt").read_text(encoding="utf-8").splitlines()
    assert (train, heldout) == rs.real_sentences(0.1, sources=("python-docs",))
    assert f"{len(train)} train + {len(heldout)} held-out" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "openclip_distill.data.real_sentences", "--out", str(out),
                          "--sources", "wikipedia"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--sources" in bad.stderr and "Traceback" not in bad.stderr
