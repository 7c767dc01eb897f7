"""Learning-curve plot for the estimators (needs matplotlib: ``pip install cyrnn[plot]``)."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["plot_learning_curve"]


def plot_learning_curve(est, ax=None):
    """Plot ``loss_curve_`` and, if present, ``validation_scores_`` of a fitted estimator.

    The training loss goes on ``ax`` (left axis); the validation score, recorded
    with ``early_stopping=True``, on a twin axis at the right.

    Parameters
    ----------
    est : fitted cyrnn estimator
        Anything with ``loss_curve_`` (and optionally ``validation_scores_``).
    ax : matplotlib Axes, default=None
        Where to draw; None creates a new figure.

    Returns
    -------
    ax : matplotlib Axes
        The axes holding the loss curve.

    Raises
    ------
    ImportError
        matplotlib is not installed.

    Examples
    --------
    >>> import numpy as np, cyrnn
    >>> X = np.random.default_rng(0).normal(size=(40, 5, 1))
    >>> est = cyrnn.SimpleRNNRegressor(hidden_size=4, max_iter=3, random_state=0)
    >>> ax = cyrnn.plot_learning_curve(est.fit(X, X[:, -1, 0]))  # doctest: +SKIP
    """
    check_is_fitted(est, "loss_curve_")
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_learning_curve needs matplotlib; install it with "
                          "`pip install matplotlib` (or `pip install cyrnn[plot]`)") from exc
    if ax is None:
        _, ax = plt.subplots()
    losses = np.asarray(est.loss_curve_, dtype=float)
    epochs = np.arange(1, len(losses) + 1)
    lines = ax.plot(epochs, losses, color="C0", marker="." if len(losses) < 50 else None,
                    label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    scores = getattr(est, "validation_scores_", None)
    if scores is not None and len(scores):
        twin = ax.twinx()
        scores = np.asarray(scores, dtype=float)
        lines += twin.plot(np.arange(1, len(scores) + 1), scores, color="C1",
                           marker="." if len(scores) < 50 else None,
                           label="validation score")
        twin.set_ylabel("validation score")
    ax.legend(lines, [line.get_label() for line in lines], loc="best")
    ax.set_title(f"{type(est).__name__} learning curve")
    return ax
