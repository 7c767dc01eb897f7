"""Character-level language models: learn a corpus, then invent text one character at a time.

:class:`CharLanguageModel` is the material's favourite demo made first-class:
dinosaur names, Tang poems, any Unicode text. Training runs the estimators' fit
loop (:func:`cyrnn.fitting.run_epochs`) with :func:`cyrnn.training.train_step`
(lists of strings, batched by length) or :func:`cyrnn.training.tbptt` (one long
text); sampling (:class:`cyrnn.generation.CharSampler`, which a saved model's scorer
shares) runs the whole one-to-many loop inside the backend's ``generate`` kernel
(compiled on the Cython backend; ``docs/architecture.md``, "Generation").

Token ids: 0 is padding, 1 the begin marker, 2 the end marker, and
``3 .. 3 + len(chars_) - 1`` the sorted characters of the training data.

Examples
--------
>>> from cyrnn.language_model import CharLanguageModel
>>> names = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald"]
>>> lm = CharLanguageModel(hidden_size=16, max_epochs=3, random_state=0).fit(names)
>>> len(lm.sample(4, random_state=0))
4
"""

from __future__ import annotations

import inspect
import math

import numpy as np
from scipy.special import log_softmax
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from . import _validation as V
from . import layers as _layers
from . import persistence
from .backends import check_backend_name
from .batching import LengthBatcher, pad, sorted_batches
from .cells import CELL_TABLE, FAMILIES, resolve
from . import generation as _generation
from .fitting import History, Progress, run_epochs
from .generation import (BOS, COMMA, EOS, MIN_TEMPERATURE, N_RESERVED, PAD, PERIOD,
                         POEM_FORMS, PRESETS, CharSampler, check_poem_head, check_poem_start,
                         is_cjk_ideograph, is_poem, read_stored_fields)
from .layers import Dense, Embedding
from .model import TRAIN_COMPUTE, Sequential
from .optim import get_optimizer
from .training import tbptt, train_step

# (the vocabulary and sampling names live in cyrnn.generation; kept importable here)
__all__ = ["CharLanguageModel", "PAD", "BOS", "EOS", "N_RESERVED", "POEM_FORMS", "COMMA",
           "PERIOD", "MIN_TEMPERATURE", "is_cjk_ideograph", "check_poem_head",
           "check_poem_start", "is_poem", "PRESETS", "prepare_corpus"]

# The layer class of each cell family, from the cell table.
_CELLS = {row.family: getattr(_layers, row.layer) for row in CELL_TABLE}
_OPTIMIZERS = ("adam", "rmsprop", "sgd")
# The parameters that shape the network: saved as fitted (``set_params`` after a fit
# changes the parameters, not the fitted network, as in scikit-learn and a pickle).
_ARCH = ("cell", "hidden_size", "num_layers", "embedding_dim", "peephole", "dtype",
         "train_compute")
KIND = "cyrnn.CharLanguageModel"

def prepare_corpus(name, max_samples=None, max_vocab=None, random_state=0):
    """A bundled corpus as training strings, optionally reduced to fit a time budget.

    Parameters
    ----------
    name : {'dinos', 'tang'}
    max_samples : int, optional
        Keep at most this many sequences (a seeded random subset).
    max_vocab : int, optional
        Keep only the sequences written entirely with the ``max_vocab`` most
        frequent characters (before subsetting). A smaller vocabulary makes the
        output layer (one logit per character) cheaper: Tang poems use 5,589
        characters, but 2,000 cover 96% of the text.
    random_state : int, default 0

    Returns
    -------
    list of str
    """
    from . import datasets

    if name == "dinos":
        texts = datasets.load_dinos()
    elif name == "tang":
        texts = datasets.load_tang_poems()
    else:
        raise ValueError(f"unknown corpus {name!r}; choose from ['dinos', 'tang']")
    if max_vocab is not None:
        from collections import Counter

        counts = Counter("".join(texts))
        common = {ch for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                  [:V.check_int(max_vocab, "max_vocab", minimum=1)]}
        texts = [t for t in texts if set(t) <= common]
    if max_samples is not None and V.check_int(max_samples, "max_samples", minimum=1) < len(texts):
        rng = np.random.default_rng(random_state)
        keep = np.sort(rng.choice(len(texts), max_samples, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def _shifted(seqs):
    """Inputs ``s[:-1]``, targets ``s[1:]`` and their lengths, of token sequences ``s``
    (next-token prediction)."""
    return ([s[:-1] for s in seqs], [s[1:] for s in seqs],
            np.array([len(s) - 1 for s in seqs]))


class _OneHotEmbedding(Embedding):
    """One-hot input as a frozen identity embedding.

    ``weight`` is the identity and :meth:`backward` adds no gradient, so the
    optimizer never changes it (zero gradients leave SGD, RMSProp and Adam
    parameters untouched). The next layer then computes exactly ``W_ih e_v +
    b_ih``, the one-hot model's projection.
    """

    # The fused model calls may run it as a lookup table that gets no gradient.
    _fused_frozen = True

    def __init__(self, vocab_size, *, dtype=np.float32):
        super().__init__(vocab_size, vocab_size, dtype=dtype)

    def reset_parameters(self, random_state=None):
        self.params["weight"][...] = np.eye(self.vocab_size, dtype=self.dtype)

    def backward(self, d_output):
        self._require_cache()
        return None


class CharLanguageModel(CharSampler, BaseEstimator):
    """A character-level recurrent language model that writes new text.

    The network is ``Sequential([Embedding, LSTM/GRU/SimpleRNN (return_sequences),
    Dense(vocab)])`` trained with softmax cross-entropy on the next character at
    every step. The defaults suit a small corpus such as the 1,543 dinosaur names
    (``PRESETS['dinos']``: about 10 s on 2 cores, held-out perplexity about 5.2);
    larger alphabets and corpora want more units (``PRESETS['tang']``).

    It is a scikit-learn estimator: ``__init__`` stores the parameters as given,
    :meth:`fit` validates them (``ValueError``/``TypeError``), ``get_params`` /
    ``set_params`` and ``sklearn.base.clone`` work, and what fitting learns ends in
    ``_``. Training runs the estimators' fit loop (:func:`cyrnn.fitting.run_epochs`)
    over batches of similar length (:class:`cyrnn.batching.LengthBatcher`).

    Parameters
    ----------
    cell : {'lstm', 'gru', 'rnn'}, default 'lstm'
        The cell family (:data:`cyrnn.cells.FAMILIES`).
    hidden_size : int, default 64
    num_layers : int, default 1
    embedding_dim : int or None, default 32
        Size of the learned character vectors. ``None`` feeds one-hot vectors
        instead, implemented as a frozen identity ``Embedding(V, V)`` whose
        gradient is discarded: exactly the one-hot model (the recurrent layer's
        ``W_ih`` columns are the per-character inputs), with no separate code
        path, but its cost grows with the vocabulary ``V`` (the one-hot rows are
        materialised and multiplied). Use it for small alphabets (names: ~55
        symbols); use an embedding for large ones (Chinese: thousands).
    dropout : float, default 0
        Between stacked layers (``num_layers > 1``), training only.
    optimizer : {'adam', 'rmsprop', 'sgd'}, default 'adam'
    learning_rate : float, default 0.005
    batch_size : int, default 32
        Sequences per update (list input; sequences of similar length are batched
        together, padded, and masked by their lengths), or parallel streams (text).
    max_epochs : int, default 20
    clip_norm : float or None, default 5
        Gradient clipping by global norm.
    clip_value : float or None, default None
        Gradient clipping by value: every gradient entry into ``[-clip_value,
        clip_value]`` (the course's dinosaur model clips at 5), before ``clip_norm``
        when both are set (as :class:`cyrnn.optim.Optimizer` applies them).
    bptt : int, default 100
        Chunk length of truncated BPTT for one long text (:meth:`fit_text`); the
        state is carried across chunks.
    backend : str, default 'auto'
    dtype : {float32, float64}, default float32
    random_state : None, int, numpy Generator or RandomState
        Seeds initialisation, shuffling, and :meth:`sample` calls that give no
        ``random_state`` of their own (a RandomState gives a seed drawn from it,
        as the estimators take one; a Generator or RandomState is not saved).
    verbose : bool, default False
        A tqdm progress bar on stderr while training.
    peephole : bool, default False
        LSTM only: peephole connections (see :class:`cyrnn.LSTM`).
    train_compute : {'float32', 'bfloat16'}, default 'float32'
        Arithmetic of the training steps' weight products (see the estimators'
        parameter and :attr:`cyrnn.Sequential.train_compute`; float32 and the
        Cython backend; sampling runs float32).

    Attributes
    ----------
    chars_ : list of str
        The training data's characters, sorted; character ``chars_[k]`` has id ``k + 3``.
    vocab_size_ : int
        ``len(chars_) + 3``.
    mode_ : {'sequences', 'text'}
        ``fit`` on a list of strings (each one a sequence between begin/end markers)
        or on one long text.
    model_ : Sequential
    loss_curve_ : list of float
        Mean training loss (nats per character) of every epoch.
    train_time_ : float
        Seconds spent in the last :meth:`fit`.
    max_length_ : int
        Longest training sequence (characters), for the default sample length.
    """

    def __init__(self, cell="lstm", hidden_size=64, num_layers=1, embedding_dim=32,
                 dropout=0.0, optimizer="adam", learning_rate=0.005, batch_size=32,
                 max_epochs=20, clip_norm=5.0, bptt=100, backend="auto", dtype=np.float32,
                 random_state=None, verbose=False, peephole=False, train_compute="float32",
                 clip_value=None):
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.bptt = bptt
        self.backend = backend
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.peephole = peephole
        self.train_compute = train_compute

    # ------------------------------------------------------------------ params
    # get_params / set_params: scikit-learn's (BaseEstimator), from __init__'s signature.
    def __repr__(self):
        changed = []
        for name, param in inspect.signature(type(self)).parameters.items():
            value, default = getattr(self, name), param.default
            if name == "dtype":
                value, default = np.dtype(value).name, np.dtype(default).name
            if value != default or type(value) is not type(default):
                changed.append(f"{name}={value!r}")
        return f"CharLanguageModel({', '.join(changed)})"

    def _check_params(self):
        """Validate the parameters (in :meth:`fit`, as scikit-learn estimators do)."""
        V.check_choice(self.cell, "cell", FAMILIES)
        if not isinstance(self.peephole, (bool, np.bool_)):
            raise TypeError(f"peephole must be a bool, got {type(self.peephole).__name__}")
        if self.peephole and self.cell != "lstm":
            raise ValueError(f"peephole=True needs cell='lstm', got cell={self.cell!r}")
        V.check_int(self.hidden_size, "hidden_size", minimum=1)
        V.check_int(self.num_layers, "num_layers", minimum=1)
        V.check_int(self.embedding_dim, "embedding_dim", minimum=1, allow_none=True)
        V.check_float(self.dropout, "dropout", 0.0, 1.0, include_max=False)
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(_OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        V.check_float(self.learning_rate, "learning_rate", 0.0, include_min=False)
        V.check_int(self.batch_size, "batch_size", minimum=1)
        V.check_int(self.max_epochs, "max_epochs", minimum=0)
        V.check_float(self.clip_norm, "clip_norm", 0.0, include_min=False, allow_none=True)
        V.check_float(self.clip_value, "clip_value", 0.0, include_min=False, allow_none=True)
        V.check_int(self.bptt, "bptt", minimum=1)
        check_backend_name(self.backend)
        V.check_dtype(self.dtype)
        V.check_choice(self.train_compute, "train_compute", TRAIN_COMPUTE)
        if self.train_compute == "bfloat16":
            if V.check_dtype(self.dtype) != np.float32:
                raise ValueError("train_compute='bfloat16' needs dtype=float32")
            if self.backend not in ("auto", "cython"):
                raise ValueError("train_compute='bfloat16' needs the Cython backend "
                                 f"(backend='cython' or 'auto'), got backend={self.backend!r}")
        if not (self.random_state is None or isinstance(
                self.random_state, (np.random.Generator, np.random.RandomState))):
            V.check_int(self.random_state, "random_state", minimum=0)

    # ------------------------------------------------------------------ vocabulary
    def _require_fitted(self):
        if not hasattr(self, "model_"):
            # scikit-learn's NotFittedError (a ValueError and AttributeError), as the
            # estimators raise
            raise NotFittedError("this CharLanguageModel is not fitted yet: call fit() "
                                 "first")

    # ------------------------------------------------------------------ model
    def _build_model(self, rng):
        dtype = V.check_dtype(self.dtype)
        Vsz = self.vocab_size_
        if self.embedding_dim is None:
            emb = _OneHotEmbedding(Vsz, dtype=dtype)
        else:
            emb = Embedding(Vsz, self.embedding_dim, dtype=dtype, random_state=rng)
        options = {"peephole": True} if self.peephole else {}
        rnn = _CELLS[self.cell](emb.output_size, self.hidden_size, self.num_layers,
                                dropout=self.dropout, return_sequences=True, return_state=True,
                                backend=self.backend, dtype=dtype, random_state=rng, **options)
        dense = Dense(self.hidden_size, Vsz, dtype=dtype, random_state=rng)
        model = Sequential([emb, rnn, dense])
        model.train_compute = self.train_compute
        return model

    def _architecture(self):
        """The parameters that shape the network, in JSON form (:data:`_ARCH`)."""
        return {"cell": self.cell, "hidden_size": int(self.hidden_size),
                "num_layers": int(self.num_layers),
                "embedding_dim": None if self.embedding_dim is None else int(self.embedding_dim),
                "peephole": bool(self.peephole), "dtype": np.dtype(V.check_dtype(self.dtype)).name,
                "train_compute": self.train_compute}

    def _n_params(self):
        """Size of the parameter vector of :meth:`_build_model`'s network, computed
        without building it (Python integers: no overflow, no allocation)."""
        Vsz, H, L = self.vocab_size_, int(self.hidden_size), int(self.num_layers)
        E = Vsz if self.embedding_dim is None else int(self.embedding_dim)
        row = resolve(self.cell, **({"peephole": True} if self.peephole else {}))
        G, P = row.n_gates, row.n_peepholes  # from the cell table
        rnn = G * H * (E + H + 2) + (L - 1) * G * H * (H + H + 2) + L * P * H
        return Vsz * E + rnn + Vsz * (H + 1)

    def _make_optimizer(self):
        return get_optimizer(self.optimizer.lower(), self.model_, lr=float(self.learning_rate),
                             clip_norm=None if self.clip_norm is None else float(self.clip_norm),
                             clip_value=None if self.clip_value is None
                             else float(self.clip_value))

    def _check_texts(self, texts, what="texts"):
        if isinstance(texts, str):
            return [texts]
        if isinstance(texts, bytes | bytearray | memoryview):
            raise TypeError(f"{what} must be a str or a list of str, got "
                            f"{type(texts).__name__}: decode it first, e.g. "
                            "data.decode('utf-8')")
        try:
            texts = list(texts)
        except TypeError:
            raise TypeError(f"{what} must be a str or a list of str, "
                            f"got {type(texts).__name__}") from None
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"{what} must hold strings, got {bad[0]}")
        if not texts:
            raise ValueError(f"{what} is empty")
        return texts

    # ------------------------------------------------------------------ training
    def fit(self, texts, y=None):
        """Learn ``texts``.

        Parameters
        ----------
        texts : list of str, or str
            A list: independent sequences (names, poems), each learnt between a
            begin and an end marker, so samples are whole sequences. A single
            ``str``: one long text, see :meth:`fit_text`.
        y : None
            Ignored (scikit-learn's convention for models without targets, so the
            model can end a ``Pipeline``).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad input, or training diverged (:func:`cyrnn.training.check_divergence`).
            The model is changed only by a fit that completes: after an error or an
            interruption (Ctrl-C) it is as it was before the call.
        """
        if isinstance(texts, str):
            return self.fit_text(texts)
        self._check_params()
        texts = self._check_texts(texts)
        chars = sorted(set("".join(texts)))
        if not chars:
            raise ValueError("texts hold no characters to learn from")
        lm = self._new_fit()  # trained apart; self changes only when it succeeds
        rng = lm._start_fit(chars, "sequences", max(len(t) for t in texts))
        xs, ys, lens = _shifted([np.concatenate([[BOS], lm.encode(t), [EOS]]) for t in texts])
        # Batches of similar length, the whole epoch sorted at once (one pool); the
        # 'uniform' draw reproduces the fits of earlier versions for a given seed.
        batcher = LengthBatcher(min(int(self.batch_size), len(xs)), lens, pool_batches=None,
                                draw="uniform")

        def step(idx):
            value = train_step(lm.model_, lm._optim, "softmax_cross_entropy",
                               pad(xs, idx, dtype=np.int64), pad(ys, idx, dtype=np.int64),
                               lengths=lens[idx])
            return value, float(lens[idx].sum())  # weight: the predictions of the batch

        sample = [texts[i] for i in np.unique(np.linspace(0, len(texts) - 1,
                                                          min(len(texts), 256)).astype(int))]
        lm._train(lambda: batcher.epoch(rng), step, lambda: lm.per_char_loss(sample))
        return self._commit(lm)

    def fit_text(self, text):
        """Learn one long text with truncated BPTT.

        The text (after a begin marker) is cut into ``batch_size`` parallel streams
        trained in chunks of ``bptt`` characters with :func:`cyrnn.training.tbptt`;
        each stream's state is carried from one chunk to the next within an epoch.
        Samples then continue the text for ``max_length`` characters.

        Parameters
        ----------
        text : str (at least 2 characters)

        Returns
        -------
        self
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if len(text) < 2:
            raise ValueError("the text needs at least 2 characters")
        self._check_params()
        lm = self._new_fit()  # trained apart; self changes only when it succeeds
        lm._start_fit(sorted(set(text)), "text", 200)
        ids = np.concatenate([[BOS], lm.encode(text)])
        B = max(1, min(int(self.batch_size), (len(ids) - 1) // int(self.bptt)))
        L = (len(ids) - 1) // B
        x = ids[:B * L].reshape(B, L)
        y = ids[1:B * L + 1].reshape(B, L)
        k = int(self.bptt)
        starts = list(range(0, L, k))
        state = {"states": None}

        def chunks():
            state["states"] = None  # every epoch starts the streams afresh
            return starts

        def step(s):
            losses, state["states"] = tbptt(lm.model_, lm._optim, "softmax_cross_entropy",
                                            x[:, s:s + k], y[:, s:s + k], k1=k,
                                            initial_states=state["states"])
            return losses[0], float(B * min(k, L - s))

        lm._train(chunks, step, lambda: lm.per_char_loss(text[:1000]))
        return self._commit(lm)

    # The fitted state: set on a fresh twin by a fit, then copied at once (_commit).
    _FITTED = ("chars_", "vocab_size_", "_index", "mode_", "max_length_", "model_", "_optim",
               "_rng", "_sample_rng", "loss_curve_", "train_time_", "_arch")

    def _new_fit(self):
        """An unfitted model with this one's parameters, to train without touching self
        (an interrupted or failed fit leaves self as it was)."""
        return type(self)(**self.get_params(deep=False))

    def _commit(self, lm):
        self.__dict__.update({name: lm.__dict__[name] for name in self._FITTED})
        return self

    def _start_fit(self, chars, mode, max_length):
        rng = V.check_rng(self.random_state)
        self._set_vocabulary(chars)
        self.mode_ = mode
        # (the default sampling length is twice it; a file stores at most this many)
        self.max_length_ = min(int(max_length), _generation.MAX_STORED_LENGTH)
        self._arch = self._architecture()
        self.model_ = self._build_model(rng)
        self._optim = self._make_optimizer()
        self._rng = rng
        self._sample_rng = np.random.default_rng(rng.integers(2**63))
        self.loss_curve_ = []
        return rng

    def _train(self, batches, step, start_loss):
        """``max_epochs`` epochs of :func:`cyrnn.fitting.run_epochs` (the estimators' loop)."""
        epochs = int(self.max_epochs)
        result = run_epochs(self.model_, History(loss_curve=self.loss_curve_), epochs=epochs,
                            batches=batches, step=step, start_loss=start_loss,
                            progress=Progress(self.verbose, epochs, per_epoch=False),
                            advice="lower learning_rate, or set clip_norm or clip_value")
        self.train_time_ = result.seconds
        return self

    # ------------------------------------------------------------------ evaluation
    def per_char_loss(self, texts):
        """Mean cross-entropy (nats) per predicted character.

        Parameters
        ----------
        texts : list of str, or str
            Evaluated the way the model was trained: for a ``'sequences'`` model each
            string is one sequence (its characters and its end marker are predicted,
            starting after the begin marker); for a ``'text'`` model each string is a
            text whose characters are predicted after the begin marker.

        Raises ValueError naming characters outside the vocabulary.
        """
        nll, count = self._total_nll(self._check_texts(texts))
        return nll / count

    def perplexity(self, texts):
        """``exp(per_char_loss(texts))``: the effective number of equally likely
        choices per character (lower is better; a uniform guess over the vocabulary
        scores ``vocab_size_``)."""
        return math.exp(self.per_char_loss(texts))

    def _sync_backend(self):
        """Layers run on ``self.backend`` (which may change after fitting)."""
        self.model_.layers[1].backend = check_backend_name(self.backend)

    # (for cyrnn.generation.CharSampler)
    def _network(self):
        return self.model_, isinstance(self.model_.layers[0], _OneHotEmbedding)

    def _sampling_backend(self):
        self._sync_backend()
        return self.backend

    def _total_nll(self, texts):
        self._require_fitted()
        self._sync_backend()
        end = [EOS] if self.mode_ == "sequences" else []
        seqs = [np.concatenate([[BOS], self.encode(t), end]).astype(np.int64) for t in texts]
        seqs = [s for s in seqs if len(s) > 1]
        if not seqs:
            raise ValueError("nothing to predict: the texts are empty")
        total, count = 0.0, 0
        if self.mode_ == "text":
            for s in seqs:
                states = None
                k = max(int(self.bptt), 256)
                for a in range(0, len(s) - 1, k):
                    b = min(a + k, len(s) - 1)
                    x, y = s[a:b][None], s[a + 1:b + 1][None]
                    out, states = self.model_.forward(x, initial_states=states,
                                                      training=False, return_states=True)
                    total += self._nll(out, y, None)
                    count += y.size
            return total, count
        xs, ys, lens = _shifted(seqs)
        batch = max(1, min(256, 2_000_000 // (int(lens.max()) * self.vocab_size_)))  # memory
        for idx in sorted_batches(lens, batch):  # sorted by length: little padding
            x, y = pad(xs, idx, dtype=np.int64), pad(ys, idx, dtype=np.int64)
            mask = np.arange(x.shape[1])[None, :] < lens[idx][:, None]
            out = self.model_.forward(x, lengths=lens[idx], training=False)
            total += self._nll(out, y, mask)
            count += int(mask.sum())
        return total, count

    @staticmethod
    def _nll(logits, y, mask):
        logp = log_softmax(logits.astype(np.float64), axis=-1)
        picked = np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
        if mask is not None:
            picked = picked[mask]
        return float(-picked.sum())

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Save the fitted model to one file (arrays + JSON, no pickle).

        Load it with :func:`cyrnn.load` (or :func:`cyrnn.persistence.load`). The
        optimizer state is not stored: a loaded model samples and evaluates
        identically; fitting again starts afresh.
        """
        self._require_fitted()
        params = self.get_params(deep=False)
        params["dtype"] = np.dtype(self.dtype).name
        seed = params["random_state"]
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            params["random_state"] = int(seed)
        elif seed is not None:
            params["random_state"] = None  # a Generator cannot be stored
        arch = self.__dict__.get("_arch") or self._architecture()  # (older pickles: none)
        meta = {"class": "CharLanguageModel", "params": params, "architecture": arch,
                "chars": "".join(self.chars_),
                "mode": self.mode_, "max_length": self.max_length_,
                "loss_curve": [float(v) for v in self.loss_curve_],
                "train_time": float(getattr(self, "train_time_", 0.0))}
        persistence.save_archive(path, KIND, meta, {"params": self.model_.params.data})
        return path

    @classmethod
    def _from_archive(cls, meta, arrays):
        try:
            if meta.get("class") != "CharLanguageModel":
                raise ValueError("the archive does not hold a CharLanguageModel")
            params = dict(meta["params"])
            unknown = sorted(set(params) - set(cls._get_param_names()))
            if unknown:
                raise ValueError(f"unknown parameters {unknown}")
            cls(**params)._check_params()
            # the network as fitted (files before 2026-12-02: as the parameters say)
            arch = meta.get("architecture", {k: params[k] for k in _ARCH if k in params})
            if not isinstance(arch, dict) or not set(arch) <= set(_ARCH):
                raise ValueError("bad architecture entry")
            lm = cls(**{**params, **arch})
            lm._check_params()
            stored = read_stored_fields(meta)
            lm.mode_, lm.max_length_ = stored["mode"], stored["max_length"]
            lm._set_vocabulary(stored["chars"])
            # Everything is checked against the declared architecture before the
            # network is built: the stored vector bounds what loading allocates.
            data = arrays["params"]
            n_params = lm._n_params()
            if data.shape != (n_params,):
                raise ValueError(f"parameter vector of shape {data.shape}, the architecture "
                                 f"needs ({n_params},)")
            if data.dtype != V.check_dtype(lm.dtype):
                raise ValueError(f"parameter vector of dtype {data.dtype}, the model's dtype "
                                 f"is {np.dtype(lm.dtype).name}")
            if not np.isfinite(data).all():
                raise ValueError("the parameter vector contains NaN or infinity")
            rng = V.check_rng(lm.random_state)
            lm.model_ = lm._build_model(rng)
            lm.model_.params.data[...] = data
            lm._optim = lm._make_optimizer()
            lm._rng = rng
            lm._sample_rng = np.random.default_rng(rng.integers(2**63))
            lm.loss_curve_ = stored["loss_curve"]
            lm.train_time_ = stored["train_time"]
            lm._arch = lm._architecture()
            lm.set_params(**params)  # the parameters as saved (a later fit uses them)
        except ValueError as exc:
            raise ValueError(f"invalid CharLanguageModel archive: {exc}") from exc
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid CharLanguageModel archive: {type(exc).__name__}: {exc}") \
                from exc
        return lm


persistence.register_loader(KIND, CharLanguageModel._from_archive)
