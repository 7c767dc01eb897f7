"""Small datasets for cyrnn's examples, tests and benchmarks, bundled with the package.

Every loader works offline on a fresh install: the files live in
``cyrnn/datasets/data/`` (plain data, no pickles; see the ``NOTICE`` file there
for sources and licenses) and their SHA-256 checksums are verified the first
time they are read.

===========================  ===============================================================
loader                       what it returns
===========================  ===============================================================
:func:`load_dinos`           1,543 dinosaur names (list of str)
:func:`load_tang_poems`      17,528 five-character Tang poems (list of str), 4 or 8 lines
:func:`load_imdb_subset`     IMDB reviews as word-id sequences, binary sentiment labels
:func:`load_digits_sequences`  scikit-learn's 8x8 digits read row by row: (n, 8, 8) sequences
:func:`make_cosine`          the windowed one-step-ahead cosine series (generated)
===========================  ===============================================================
"""

from __future__ import annotations

import gzip
import hashlib
import io
from importlib import resources

import numpy as np

__all__ = ["load_dinos", "load_tang_poems", "load_imdb_subset", "load_digits_sequences",
           "make_cosine", "data_path"]

# SHA-256 of the *uncompressed* content (the checksums of the data's SHA256SUMS).
_SHA256 = {
    "dinos.txt": "0704eb65c34137226ad13023cfaa77edf70222aaaf3e2a926b9b791a25b025f6",
    "tang5.txt": "d6c62e238b9a055a59913b74afcdaaced495209d586aeeb2bf735e212507e800",
    "imdb_subset.npz": "71f4dd765cc8f99e214b8570512f8156a25466546e59ebbaa4b0efb9e1f8654e",
}
# Stored name of each file inside the package.
_STORED = {"dinos.txt": "dinos.txt", "tang5.txt": "tang5.txt.gz",
           "imdb_subset.npz": "imdb_subset.npz"}
_cache = {}


def data_path(name):
    """A ``Traversable`` for the stored file behind ``name`` (e.g. ``'tang5.txt'``)."""
    return resources.files(__name__).joinpath("data", _STORED[name])


def _read(name):
    """The verified, uncompressed bytes of a bundled file (cached)."""
    if name not in _cache:
        try:
            raw = data_path(name).read_bytes()
        except (FileNotFoundError, OSError) as exc:
            raise OSError(f"cyrnn's bundled data file {_STORED[name]!r} is missing "
                          f"({exc}); reinstall cyrnn") from exc
        if _STORED[name].endswith(".gz"):
            raw = gzip.decompress(raw)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != _SHA256[name]:
            raise OSError(f"cyrnn's bundled data file {_STORED[name]!r} is damaged "
                          f"(SHA-256 {digest[:12]}..., expected {_SHA256[name][:12]}...); "
                          "reinstall cyrnn")
        _cache[name] = raw
    return _cache[name]


def load_dinos():
    """Dinosaur names, the classic character-level language-model corpus.

    Returns
    -------
    names : list of str
        1,543 names (1,530 distinct), in the file's (alphabetical) order,
        capitalised (``'Aachenosaurus'``); a few entries are noise (``'Skeleton'``).

    Notes
    -----
    Source, license: list of genus names, public facts.
    """
    return _read("dinos.txt").decode("utf-8").split("\n")


def load_tang_poems(lines=None):
    """Tang-dynasty poems in five-character lines, one poem per string.

    Parameters
    ----------
    lines : {None, 4, 8}, default None
        4: only the quatrains (3,656 poems of 4 lines), 8: only the eight-line
        poems (13,872), None: all 17,528.

    Returns
    -------
    poems : list of str
        Each poem is one string of its lines, each line five characters followed by
        a full-width ``，`` (lines 1, 3, 5, 7) or ``。`` (lines 2, 4, 6, 8), e.g.
        ``'一与钟山别，山中得信稀。经年求法后，...'`` (24 characters for a quatrain,
        48 for an eight-line poem). Simplified characters.

    Notes
    -----
    Source, license: extracted from the chinese-poetry project's 全唐诗 collection
    (MIT license, https://github.com/chinese-poetry/chinese-poetry), converted to
    simplified characters; the poems themselves are public domain.
    """
    if lines not in (None, 4, 8):
        raise ValueError(f"lines must be None, 4 or 8, got {lines!r}")
    poems = [p for p in _read("tang5.txt").decode("utf-8").split("\n") if p]
    if lines is not None:
        poems = [p for p in poems if len(p) == 6 * lines]
    return poems


def load_imdb_subset():
    """IMDB movie reviews as word-index sequences with binary sentiment labels.

    Returns
    -------
    X_train : list of 5,000 int32 arrays (variable lengths)
    y_train : (5000,) int8, 1 = positive
    X_test : list of 1,000 int32 arrays
    y_test : (1000,) int8

    Word ids: the vocabulary is capped at the 500 most frequent words; 1 marks the
    start of a review, 2 an out-of-vocabulary word (0 is free for padding).

    Notes
    -----
    Source, license: the Keras IMDB word-index format (arrays ``train_tokens``,
    ``train_offsets``, ``train_labels``, ``test_tokens``, ``test_offsets``,
    ``test_labels``: review *i* is ``tokens[offsets[i]:offsets[i+1]]``).
    """
    with np.load(io.BytesIO(_read("imdb_subset.npz")), allow_pickle=False) as npz:
        out = []
        for part in ("train", "test"):
            tokens, offsets = npz[f"{part}_tokens"], npz[f"{part}_offsets"]
            out.append([tokens[offsets[i]:offsets[i + 1]].copy()
                        for i in range(len(offsets) - 1)])
            out.append(npz[f"{part}_labels"].copy())
    return tuple(out)


def load_digits_sequences(dtype=np.float32):
    """scikit-learn's handwritten digits as sequences: 8 time steps (rows) of 8 features.

    The small stand-in for row-by-row MNIST.

    Parameters
    ----------
    dtype : float dtype, default float32

    Returns
    -------
    X : (1797, 8, 8) values in [0, 1] (pixel intensities 0..16 divided by 16)
    y : (1797,) int digits 0..9

    Notes
    -----
    Source, license: :func:`sklearn.datasets.load_digits` (shipped with
    scikit-learn, BSD-3-Clause; originally the UCI optical recognition of
    handwritten digits data set).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.images / 16.0).astype(dtype)
    return X, digits.target.copy()


def make_cosine(n=200, window=50, dtype=np.float32):
    """The windowed one-step-ahead cosine series.

    The series ``cos(0), cos(1), ..., cos(n - 1)``; sample ``i`` is the window
    ``series[i:i + window]`` and its target the next value ``series[i + window]``.

    Parameters
    ----------
    n : int, default 200
        Length of the series.
    window : int, default 50
    dtype : float dtype, default float32

    Returns
    -------
    X : (n - window, window, 1)
    y : (n - window,)

    Notes
    -----
    Generated in code (no file, no license).
    """
    from .. import _validation as V

    n = V.check_int(n, "n", minimum=2)
    window = V.check_int(window, "window", minimum=1, maximum=n - 1)
    series = np.cos(np.arange(n, dtype=np.float64))
    idx = np.arange(n - window)[:, None] + np.arange(window)[None, :]
    X = series[idx][..., None].astype(dtype)
    y = series[window:].astype(dtype)
    return X, y
