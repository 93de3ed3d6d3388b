"""text_lm: the shipped corpus (content-hashed), byte windows, perplexity (lower is better)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from deploy.errors import CorpusError, TokenizerError
from deploy.lm.tokenizer import ByteTokenizer, load
from deploy.tasks import corpus, get_task
from deploy.tasks.text import windows


@pytest.fixture(scope="module")
def task():
    return get_task("text_lm", 0, {"seq": 32, "val_windows": 8, "test_windows": 8})


def test_splits_are_windows_whose_targets_are_the_next_tokens(task):
    val = task.split("val")
    assert tuple(val.inputs["tokens"].shape) == (8, 32) == tuple(val.targets.shape)
    assert torch.equal(val.inputs["tokens"][:, 1:], val.targets[:, :-1])
    assert int(val.inputs["tokens"].max()) < 256 and val.inputs["tokens"].dtype == torch.int64


def test_files_of_val_and_test_are_never_in_train():
    c = corpus.load()
    by_split = {s: {n for n, v in c.splits.items() if v == s} for s in ("train", "val", "test")}
    assert by_split["val"] and by_split["test"] and not (by_split["train"] & (by_split["val"] | by_split["test"]))


def test_perplexity_is_lower_is_better_and_uniform_logits_give_the_vocabulary(task):
    assert task.metric.direction == "lower" and task.metric.name == "perplexity"
    ppl = task.evaluate(lambda inputs: torch.zeros(*inputs["tokens"].shape, 256), "val")
    assert math.isclose(ppl, 256.0, rel_tol=1e-5)
    assert task.extra_metrics(lambda inputs: torch.nn.functional.one_hot(inputs["tokens"], 256).float(), "val")


def test_a_corpus_file_that_changed_is_a_named_error(tmp_path):
    shutil.copy(corpus.MANIFEST, tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    first = next(iter(corpus.load().files))
    digest = next(e["sha256"] for e in json.loads(text)["files"] if e["name"] == first)
    (tmp_path / "m.json").write_text(text.replace(digest, "0" * 64))
    with pytest.raises(CorpusError, match=f"corpus file {first} .* does not match its sha256"):
        corpus.load(corpus.ARCHIVE, tmp_path / "m.json")


def test_windows_are_spread_over_the_split_without_overlap():
    w = windows(torch.arange(1000).numpy(), 9, 5)
    assert w.shape == (5, 10) and w[0, 0] == 0 and w[-1, 0] == 990  # 111 windows of 10, first and last kept
    assert all(w[i + 1, 0] >= w[i, -1] for i in range(4))


def test_tokenizer_round_trips_and_a_mismatched_file_is_refused(tmp_path):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("def f(x):\n    return 'é'")) == "def f(x):\n    return 'é'"
    path = tok.save(tmp_path / "tokenizer.json")
    assert load(path, vocab=256, sha256=tok.sha256) == tok
    with pytest.raises(TokenizerError, match="vocabulary of 256 but the model has 512"):
        load(path, vocab=512)
    with pytest.raises(TokenizerError, match="is not the one"):
        load(path, sha256="f" * 64)


def test_stream_decoder_waits_for_whole_characters():
    stream = ByteTokenizer().decode_stream()
    assert [stream.push(b) for b in "é!".encode()] == ["", "é", "!"]
