"""cyrnn.datasets: the bundled files load offline, match their checksums and sizes."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from cyrnn import datasets

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_dinos():
    names = datasets.load_dinos()
    assert len(names) == 1543 and len(set(names)) == 1530
    assert names[0] == "Aachenosaurus" and all(n and n.isalpha() for n in names)


def test_tang_poems():
    poems = datasets.load_tang_poems()
    assert len(poems) == 17528
    quatrains, eights = datasets.load_tang_poems(4), datasets.load_tang_poems(8)
    assert len(quatrains) == 3656 and len(eights) == 13872
    assert {len(p) for p in quatrains} == {24} and {len(p) for p in eights} == {48}
    for p in quatrains[:50] + eights[:50]:
        assert p[5::12] == "，" * (len(p) // 12) and p[11::12] == "。" * (len(p) // 12)
    with pytest.raises(ValueError):
        datasets.load_tang_poems(lines=5)


def test_checksums_and_package_data():
    folder = Path(datasets.__file__).parent / "data"
    assert {p.name for p in folder.iterdir()} >= {"dinos.txt", "tang5.txt.gz",
                                                  "imdb_subset.npz", "NOTICE"}
    notice = (folder / "NOTICE").read_text(encoding="utf-8")
    assert "chinese-poetry" in notice and "MIT" in notice
    for name, digest in datasets._SHA256.items():
        assert hashlib.sha256(datasets._read(name)).hexdigest() == digest
    # the shipped compressed file is reasonably small
    assert (folder / "tang5.txt.gz").stat().st_size < 1_300_000
    sums = SHARED / "SHA256SUMS"
    if sums.exists():  # the data's own checksum list, where the shared folder is present
        listed = dict(line.split()[::-1] for line in sums.read_text().splitlines() if line)
        assert listed == datasets._SHA256


def test_damaged_file_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "_cache", {})
    monkeypatch.setitem(datasets._SHA256, "dinos.txt", "0" * 64)
    with pytest.raises(OSError, match="damaged"):
        datasets.load_dinos()


def test_imdb_subset():
    X_train, y_train, X_test, y_test = datasets.load_imdb_subset()
    assert len(X_train) == 5000 and len(X_test) == 1000
    assert y_train.shape == (5000,) and y_test.shape == (1000,)
    assert set(np.unique(y_train)) == {0, 1}
    assert all(x.dtype == np.int32 and x.ndim == 1 for x in X_train[:20])
    assert max(int(x.max()) for x in X_train) < 500
    assert X_train[0][0] == 1  # the start marker


def test_the_imdb_example_reads_the_packaged_data():
    # examples/imdb_sentiment.py once read a folder beside the repository
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "imdb_sentiment.py"
    spec = importlib.util.spec_from_file_location("imdb_sentiment_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    X_train, y_train, X_test, y_test = example.prepare()
    assert X_train.shape == (5000, example.MAXLEN) and X_test.shape == (1000, example.MAXLEN)
    assert y_train.dtype == np.int64 and set(np.unique(y_test)) == {0, 1}


def test_digits_sequences():
    X, y = datasets.load_digits_sequences()
    assert X.shape == (1797, 8, 8) and X.dtype == np.float32 and y.shape == (1797,)
    assert X.min() == 0 and X.max() == 1 and set(np.unique(y)) == set(range(10))


def test_make_cosine():
    X, y = datasets.make_cosine()
    assert X.shape == (150, 50, 1) and y.shape == (150,)
    series = np.cos(np.arange(200)).astype(np.float32)
    np.testing.assert_array_equal(X[3, :, 0], series[3:53])
    assert y[3] == series[53]
    X, y = datasets.make_cosine(n=20, window=5, dtype=np.float64)
    assert X.shape == (15, 5, 1) and X.dtype == np.float64
    with pytest.raises(ValueError):
        datasets.make_cosine(n=10, window=10)
