"""The length-bucketing batcher of every fit loop (the estimators' and ``CharLanguageModel``'s).

Sequences of different lengths are trained in batches of similar length, so that
padding, which costs time and carries no signal, stays small:

* :class:`LengthBatcher` cuts one epoch into batches of sequence indices: a random
  order (from the model's own ``numpy.random.Generator``), cut into pools of
  ``pool_batches`` batches; each pool is sorted by length (ties keep the random
  order) and cut into batches; the batches are shuffled. Without lengths (all
  sequences equally long) an epoch is the random order cut into batches.
* :func:`sorted_batches` is the order for inference: by length, no randomness.
* :func:`pad` stacks the sequences of one batch, post-padded with zeros to the
  batch's longest; the model masks the padded steps by their ``lengths``.

Examples
--------
>>> import numpy as np
>>> from cyrnn.batching import LengthBatcher, pad, sorted_batches
>>> lengths = np.array([5, 1, 4, 2, 3, 1])
>>> batches = LengthBatcher(2, lengths).epoch(np.random.default_rng(0))
>>> sorted(sorted(lengths[b].tolist()) for b in batches)
[[1, 1], [2, 3], [4, 5]]
>>> [b.tolist() for b in sorted_batches(lengths, 4)]
[[1, 5, 3, 4], [2, 0]]
>>> pad([np.array([1, 2]), np.array([3])], [0, 1])
array([[1, 2],
       [3, 0]])
"""

from __future__ import annotations

import numpy as np

__all__ = ["LengthBatcher", "sorted_batches", "pad", "POOL_BATCHES"]

#: An epoch's random order is cut into pools of this many batches before sorting by
#: length: batches of similar length that still differ from epoch to epoch.
POOL_BATCHES = 50


class LengthBatcher:
    """One epoch's batches of sequence indices, grouped by length and shuffled.

    Parameters
    ----------
    batch_size : int
        Sequences per batch (the last batch of a pool may be smaller).
    lengths : array of int, shape (n,), or None
        Valid steps of every sequence. None: they are all equally long (nothing to
        group); then ``n`` must be given.
    n : int, optional
        Number of sequences (default ``len(lengths)``).
    pool_batches : int or None, default POOL_BATCHES
        Sort by length within pools of this many batches of the random order;
        None sorts the whole epoch at once (the tightest batches).
    draw : {'permutation', 'uniform'}, default 'permutation'
        How the random order is drawn: ``rng.permutation(n)``, or the argsort of
        ``rng.random(n)``. Both are uniformly random orders; they differ only in
        what they take from the generator. The estimators have always drawn
        'permutation' and :class:`~cyrnn.language_model.CharLanguageModel`
        'uniform', so a seed fits the same model as before either way.
    """

    def __init__(self, batch_size, lengths=None, *, n=None, pool_batches=POOL_BATCHES,
                 draw="permutation"):
        if draw not in ("permutation", "uniform"):
            raise ValueError(f"draw must be 'permutation' or 'uniform', got {draw!r}")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.n = len(self.lengths) if n is None else int(n)
        self.batch_size = int(batch_size)
        self.pool_batches = pool_batches
        self.draw = draw

    def _order(self, rng, shuffle):
        if not shuffle:
            return np.arange(self.n)
        if self.draw == "permutation":
            return rng.permutation(self.n)
        return np.argsort(rng.random(self.n), kind="stable")

    def epoch(self, rng, shuffle=True):
        """The batches of one epoch: a list of index arrays.

        ``shuffle=False`` keeps the sequences' own order (still sorted by length
        within each pool) and the batches in that order, and draws nothing.
        """
        order, bs = self._order(rng, shuffle), self.batch_size
        if self.lengths is None:
            return [order[i:i + bs] for i in range(0, self.n, bs)]
        pool = self.n if self.pool_batches is None else bs * self.pool_batches
        batches = []
        for s in range(0, self.n, pool):
            chunk = order[s:s + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
        if shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches


def sorted_batches(lengths, batch_size):
    """Batches for inference: the indices sorted by length (stable), in order."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad(items, idx, T=None, dtype=None):
    """Stack ``items[i]`` (arrays ``(T_i, ...)``) for ``i`` in ``idx`` into ``(b, T, ...)``,
    post-padded with zeros.

    ``T`` defaults to the longest of them, ``dtype`` to the first one's.
    """
    first = np.asarray(items[idx[0]])
    if T is None:
        T = max(len(items[i]) for i in idx)
    out = np.zeros((len(idx), T) + first.shape[1:], dtype=dtype or first.dtype)
    for j, i in enumerate(idx):
        out[j, :len(items[i])] = items[i]
    return out
