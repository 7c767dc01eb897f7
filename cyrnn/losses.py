"""Losses: each returns ``(value, gradient with respect to the prediction)``.

All are weighted means over the valid items: samples (weighted by
``sample_weight``, either one weight per sample or one per item, i.e. of the
prediction's leading shape) and, for per-step outputs, the steps where ``mask``
is True.
Predictions of the classification losses are logits (the activation is part of
the loss, for numerical stability).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, log_expit, log_softmax


def _weights(pred_shape, sample_weight, mask, dtype):
    """Per-item weights over the leading axes (n,) or (n, T), normalised to sum 1."""
    lead = pred_shape
    w = np.ones(lead, dtype=np.float64)
    if sample_weight is not None:
        sw = np.asarray(sample_weight, np.float64)
        if sw.shape != tuple(lead):  # per-sample weights broadcast over the steps
            sw = sw.reshape((-1,) + (1,) * (len(lead) - 1))
        w = w * sw
    if mask is not None:
        w = w * np.asarray(mask, bool)
    if w.size and w.max() > np.finfo(np.float64).max / w.size:
        w = w / w.max()  # finite weights whose sum would overflow: the same ratios
    total = w.sum()
    if total <= 0:
        raise ValueError("the loss has no valid item with positive weight")
    return (w / total).astype(dtype)


def mse(pred, target, sample_weight=None, mask=None):
    """Mean squared error, averaged over outputs. ``pred``, ``target``: (..., k)."""
    diff = pred - np.asarray(target, pred.dtype).reshape(pred.shape)
    if sample_weight is None and mask is None:
        # uniform weights 1/(items * outputs): a scalar instead of a weight array
        if pred.size == 0:
            raise ValueError("the loss has no valid item with positive weight")
        w = pred.dtype.type(1.0 / pred.size)
        wd = w * diff
        return float((wd * diff).sum()), 2.0 * wd
    w = _weights(pred.shape[:-1], sample_weight, mask, pred.dtype)[..., None] / pred.shape[-1]
    return float((w * diff * diff).sum()), 2.0 * w * diff


def softmax_cross_entropy(logits, labels, sample_weight=None, mask=None):
    """Cross-entropy of integer ``labels`` (...) under ``softmax(logits)`` (..., C)."""
    labels = np.asarray(labels, np.intp).reshape(logits.shape[:-1])
    logp = log_softmax(logits, axis=-1)
    w = _weights(logits.shape[:-1], sample_weight, mask, logits.dtype)
    picked = np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    grad = np.exp(logp)
    np.put_along_axis(grad, labels[..., None],
                      np.take_along_axis(grad, labels[..., None], axis=-1) - 1, axis=-1)
    return float(-(w * picked).sum()), (grad * w[..., None]).astype(logits.dtype)


def sigmoid_binary_cross_entropy(logits, targets, sample_weight=None, mask=None):
    """Binary cross-entropy of 0/1 ``targets`` under ``sigmoid(logits)``; shapes (..., k)."""
    y = np.asarray(targets, logits.dtype).reshape(logits.shape)
    w = _weights(logits.shape[:-1], sample_weight, mask, logits.dtype)[..., None] / logits.shape[-1]
    losses = -(y * log_expit(logits) + (1 - y) * log_expit(-logits))
    return float((w * losses).sum()), (w * (expit(logits) - y)).astype(logits.dtype)


LOSSES = {"mse": mse, "softmax_cross_entropy": softmax_cross_entropy,
          "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy}


def get_loss(name):
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}") from None
