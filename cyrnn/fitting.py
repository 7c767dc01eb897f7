"""The fit loop of every trainer: the six estimators and ``CharLanguageModel``.

:func:`run_epochs` runs the epochs: it draws each epoch's batches, trains on them
through a caller's ``step`` (which calls :func:`cyrnn.training.train_step` or
:func:`cyrnn.training.tbptt`), keeps the :class:`History` (``loss_curve``, the
validation scores and the best values, continued by a warm start), applies the
divergence rule :func:`cyrnn.training.check_divergence` after every epoch (the
untrained model's loss is the reference of a fresh history), the stopping rule
(:class:`Stopping`), and shows the :class:`Progress` bar. The callers keep only what
is theirs: validating input, building the model, and turning a batch of their data
into a training step.

Nothing here touches the caller's fitted state: the loop works on the model,
optimizer and history it is given, which the caller commits only when it returns.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .training import check_divergence

__all__ = ["History", "Stopping", "Progress", "FitResult", "run_epochs", "device_training"]


@dataclass
class History:
    """What a fit leaves behind, and what a warm start continues.

    Attributes
    ----------
    loss_curve : list of float
        Mean training loss of every epoch.
    validation_scores : list of float or None
        Held-out score after every epoch (with validation).
    best_loss : float
        Lowest training loss (``inf`` before the first epoch).
    best_validation_score : float or None
        Best held-out score.
    """

    loss_curve: list = field(default_factory=list)
    validation_scores: list | None = None
    best_loss: float = np.inf
    best_validation_score: float | None = None


class Stopping:
    """scikit-learn's stopping rule (as ``MLPRegressor``'s).

    Training stops once ``n_iter_no_change`` consecutive epochs did not improve by
    at least ``tol``: the training loss, or, with ``score``, the held-out score,
    whose best weights are then restored at the end.

    Parameters
    ----------
    tol : float
    n_iter_no_change : int or inf
    score : callable ``model -> float`` or None
        The held-out score (higher is better) after an epoch.
    """

    def __init__(self, tol, n_iter_no_change, score=None):
        self.tol, self.n_iter_no_change, self.score = tol, n_iter_no_change, score
        self.no_improvement, self.best_params = 0, None

    def start(self, model, history):
        self.no_improvement = 0
        if self.score is not None:
            if history.validation_scores is None:
                history.validation_scores = []
            history.best_validation_score = -np.inf
            self.best_params = model.params.data.copy()

    def update(self, model, history, epoch_loss):
        """Record the epoch just finished; True when training should stop."""
        if self.score is not None:
            score = self.score(model)
            history.validation_scores.append(score)
            worse = score < history.best_validation_score + self.tol
            if score > history.best_validation_score:
                history.best_validation_score = score
                self.best_params = model.params.data.copy()
        else:
            worse = epoch_loss > history.best_loss - self.tol
            history.best_loss = min(history.best_loss, epoch_loss)
        self.no_improvement = self.no_improvement + 1 if worse else 0
        return self.no_improvement > self.n_iter_no_change

    def finish(self, model):
        """Restore the best held-out weights (with ``score``)."""
        if self.score is not None:
            model.params.data[...] = self.best_params

    def message(self):
        what = "Validation score" if self.score is not None else "Training loss"
        return (f"{what} did not improve more than tol={self.tol} for "
                f"{self.n_iter_no_change} consecutive epochs. Stopping.")


class Progress:
    """A tqdm progress bar on stderr while training, or nothing.

    Parameters
    ----------
    enabled : bool
    epochs : int
        Epochs of this run.
    per_epoch : bool, default True
        One bar per epoch, ``epoch k/K`` (k counting the history's epochs too),
        showing the loss and the validation score (the estimators). False: one
        bar for the run, ``training``, showing ``epoch e/E, loss ...`` (the
        language model's many short epochs).
    numbered : bool, default True
        Show the total ``K`` (a ``partial_fit`` call has none).
    """

    def __init__(self, enabled, epochs, *, per_epoch=True, numbered=True):
        self.enabled, self.epochs = bool(enabled), int(epochs)
        self.per_epoch, self.numbered = per_epoch, numbered
        self.bar, self.epoch, self.first = None, 0, None

    def start_epoch(self, done, n_batches):
        """Epoch ``done + 1`` of the history begins, with ``n_batches`` batches."""
        if self.first is None:
            self.first = done
        self.epoch = done - self.first + 1
        if not self.enabled:
            return
        from tqdm.auto import tqdm
        if self.per_epoch:
            total = f"/{self.first + self.epochs}" if self.numbered else ""
            self.bar = tqdm(total=n_batches, file=sys.stderr, leave=True, unit="batch",
                            desc=f"epoch {done + 1}{total}")
        elif self.bar is None:
            self.bar = tqdm(total=self.epochs * n_batches, file=sys.stderr, unit="batch",
                            leave=True, desc="training", dynamic_ncols=True)

    def batch(self, loss):
        """A batch is done; ``loss``: the epoch's mean so far (None: a skipped batch)."""
        if self.bar is None:
            return
        self.bar.update(1)
        if loss is None:
            return
        if self.per_epoch:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        else:
            self.bar.set_postfix_str(f"epoch {self.epoch}/{self.epochs}, loss {loss:.3f}",
                                     refresh=False)

    def end_epoch(self, loss, score=None):
        if self.bar is None or not self.per_epoch:
            return
        post = {"loss": f"{loss:.4g}"}
        if score is not None:
            post["val_score"] = f"{score:.4g}"
        self.bar.set_postfix(post, refresh=False)
        self.close()

    def say(self, text):
        if self.enabled:
            print(text, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class FitResult:
    """What :func:`run_epochs` reports: whether the stopping rule ended training
    before ``epochs``, and the seconds spent in the epochs."""

    stopped: bool
    seconds: float


#: What the divergence error advises by default.
ADVICE = "lower learning_rate, set clip_norm, or scale the inputs and targets"


def run_epochs(model, history, *, epochs, batches, step, start_loss=None, baseline=None,
               stopping=None, progress=None, advice=ADVICE):
    """Train ``model`` for up to ``epochs`` epochs; the one fit loop.

    Parameters
    ----------
    model : cyrnn.Sequential
        Trained in place (through ``step``).
    history : History
        Continued: every epoch's mean loss is appended to ``history.loss_curve``.
    epochs : int
    batches : callable ``() -> list``
        The batches of the next epoch (e.g. :meth:`cyrnn.batching.LengthBatcher.epoch`
        on the model's generator); called once at the start of every epoch.
    step : callable ``batch -> (loss, weight) or None``
        Trains on one batch (one or more optimizer updates) and returns its mean
        loss and its weight in the epoch's mean (its sample weight, or its number
        of predictions); None when the batch has nothing to learn from.
    start_loss : callable ``() -> float or None``, optional
        The model's loss on this call's data before this call trains it (inference
        mode), a divergence reference of every call: for a fresh fit the untrained
        model's loss; for a warm start or ``partial_fit`` on data the model fits
        badly (new targets, a shifted distribution), its loss there, which the
        earlier epochs' losses would not cover.
    baseline : callable ``() -> float or None``, optional
        The loss of an all-zero output on this call's data, a divergence reference
        of every call: the scale of a regressor's targets may grow between warm
        starts or ``partial_fit`` calls, and the loss with them, while a diverged
        model's loss is far above what predicting zero costs.
    stopping : Stopping, optional
        Without it, all ``epochs`` run.
    progress : Progress, optional
    advice : str
        The end of the error raised when a batch's loss is not finite.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        Training diverged: a batch's loss is NaN or infinite, or
        :func:`cyrnn.training.check_divergence` fails after an epoch.
    """
    progress = progress or Progress(False, epochs)
    reference = start_loss() if start_loss is not None else None
    scale = baseline() if baseline is not None else None
    if stopping is not None:
        stopping.start(model, history)
    stopped = False
    began = time.perf_counter()
    device = _device_session(model)  # None unless the model trains on a device
    try:
        for _ in range(epochs):
            items = batches()
            progress.start_epoch(len(history.loss_curve), len(items))
            total = mass = 0.0
            for item in items:
                result = step(item)
                if result is None:
                    progress.batch(None)
                    continue
                value, weight = result
                if not math.isfinite(value):
                    raise ValueError(f"training diverged: the loss became {value} in epoch "
                                     f"{len(history.loss_curve) + 1}; {advice}")
                total += value * weight
                mass += weight
                progress.batch(total / mass)
            epoch_loss = total / mass
            history.loss_curve.append(epoch_loss)
            if device is not None:
                device.sync()  # the checks and the validation read the host arrays
            check_divergence(history.loss_curve, model.params.data, reference, scale, advice)
            if stopping is not None:
                stopped = stopping.update(model, history, epoch_loss)
            scores = history.validation_scores
            progress.end_epoch(epoch_loss, scores[-1] if stopping is not None
                               and stopping.score is not None else None)
            if stopped:
                progress.close()
                progress.say(stopping.message())
                break
    finally:
        if device is not None:
            device.close()  # the host arrays are the model's values again
        progress.close()
    seconds = time.perf_counter() - began
    if stopping is not None:
        stopping.finish(model)
    model.clear_caches()
    return FitResult(stopped, seconds)


def _device_session(model):
    """The device-resident training session of ``model`` (its plan's backend keeps the
    parameters, gradients and optimizer state on the device: ``backend="cuda"``), or
    None."""
    plan = model._plan() if hasattr(model, "_plan") else None
    return plan.device_session(model.params) if plan is not None else None


@contextlib.contextmanager
def device_training(model):
    """Keep ``model``'s parameters, gradients and optimizer state on the device for the
    training steps inside (:func:`cyrnn.training.train_step`, ``tbptt``, a model's
    ``forward``/``backward`` with ``Optimizer.step``) when its layers run on a backend
    that can (``backend="cuda"``; docs/architecture.md, "The CUDA backend"); elsewhere
    nothing changes. Yields the session (None when there is none), whose ``sync()``
    makes the host arrays current; they are current again on exit. :func:`run_epochs`
    trains this way."""
    session = _device_session(model)
    try:
        yield session
    finally:
        if session is not None:
            session.close()
