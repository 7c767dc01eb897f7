"""Character-level text generation, shared by training and scoring.

:class:`CharSampler` holds a character model's vocabulary (``encode``, ``decode``)
and its sampling (``sample``, ``sample_poem``): the one-to-many loop runs inside the
backend's ``generate`` kernel (compiled on the Cython backend; ``docs/architecture.md``,
"Generation"). Two classes mix it in: :class:`cyrnn.language_model.CharLanguageModel`
(a scikit-learn estimator that trains) and :class:`cyrnn.scoring.LanguageModelScorer`
(a saved model loaded by :func:`cyrnn.scoring.load`). This module imports NumPy and
cyrnn's own modules only: a text-generation service, or ``cyrnn sample``, loads a model
and writes without importing scikit-learn or SciPy's statistics.

Token ids: 0 is padding, 1 the begin marker, 2 the end marker, and
``3 .. 3 + len(chars_) - 1`` the sorted characters of the training data.
"""

from __future__ import annotations

import unicodedata

import numpy as np

from . import _validation as V
from .backends import get_backend

__all__ = ["PAD", "BOS", "EOS", "N_RESERVED", "POEM_FORMS", "MIN_TEMPERATURE", "PRESETS",
           "CharSampler", "is_cjk_ideograph", "check_poem_head", "check_poem_start", "is_poem"]

PAD, BOS, EOS = 0, 1, 2
N_RESERVED = 3
RESERVED_NAMES = ("<pad>", "<s>", "</s>")
POEM_FORMS = {"quatrain": 4, "regulated": 8}
COMMA, PERIOD = "，", "。"
#: The lowest sampling temperature (below, logits / temperature lose all precision).
MIN_TEMPERATURE = 1e-4
# Cells (rows x steps) of one block of :meth:`CharSampler.sample`'s generation
SAMPLE_CELLS = 1 << 22
# The longest training sequence a saved model may declare (its default sample
# length is twice that): a file cannot make ``sample()`` allocate without bound.
MAX_STORED_LENGTH = 1_000_000

# Default settings of a CharLanguageModel for the bundled corpora, used by ``cyrnn
# generate`` (here: the command finds its cached model without importing the trainer)
# and the examples. "dinos" is exactly the class defaults. "tang" trains on 4,000 poems
# (a seeded subset of the 5,733 written with the 2,000 most frequent characters)
# for 3 epochs. Measured with one BLAS thread on a shared 2-core machine: dinos
# 5 to 13 s, tang 45 to 67 s, depending on the other load.
PRESETS = {
    "dinos": dict(cell="lstm", hidden_size=64, embedding_dim=32, learning_rate=0.005,
                  batch_size=32, max_epochs=20),
    "tang": dict(cell="lstm", hidden_size=128, embedding_dim=64, learning_rate=0.01,
                 batch_size=32, max_epochs=3, max_samples=4000, max_vocab=2000),
}


def is_cjk_ideograph(char):
    """Whether ``char`` is a CJK (unified or compatibility) ideograph, i.e. a Chinese
    character rather than punctuation, a letter or a digit."""
    return len(char) == 1 and unicodedata.name(char, "").startswith(
        ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH"))


def check_poem_head(head, form="quatrain"):
    """Check an acrostic ``head`` for a poem of ``form`` (before any model is needed):
    a str of one CJK ideograph per line (``TypeError``/``ValueError`` otherwise)."""
    lines = POEM_FORMS[form]
    if not isinstance(head, str):
        raise TypeError(f"head must be a str, got {type(head).__name__}")
    if len(head) != lines:
        raise ValueError(f"head must have one character per line: {lines} for a "
                         f"{form}, got {len(head)} ({head!r})")
    bad = sorted({ch for ch in head if not is_cjk_ideograph(ch)})
    if bad:  # a line starts with an ideograph: the form allows nothing else there
        raise ValueError(f"head must be Chinese characters (CJK ideographs), one per "
                         f"line; {''.join(bad)!r} cannot start a line of a poem")


def check_poem_start(start):
    """Check the beginning ``start`` of a poem's first line: a str of 1 to 5 CJK
    ideographs (``TypeError``/``ValueError`` otherwise)."""
    if not isinstance(start, str):
        raise TypeError(f"start must be a str, got {type(start).__name__}")
    if not 1 <= len(start) <= 5:
        raise ValueError(f"start must be 1 to 5 characters (the beginning of the first "
                         f"line of five), got {len(start)} ({start!r})")
    bad = sorted({ch for ch in start if not is_cjk_ideograph(ch)})
    if bad:
        raise ValueError(f"start must be Chinese characters (CJK ideographs); {''.join(bad)!r} "
                         "cannot stand in a line of a poem")


def is_poem(text, form="quatrain", head=None):
    """Whether ``text`` is a five-character poem of ``form`` ('quatrain': 4 lines,
    'regulated': 8), each line five CJK ideographs followed by ``，`` (odd lines)
    or ``。`` (even lines), and, with ``head``, line ``k`` starting with ``head[k]``."""
    if form not in POEM_FORMS:
        raise ValueError(f"form must be one of {sorted(POEM_FORMS)}, got {form!r}")
    lines = POEM_FORMS[form]
    if head is not None and (not isinstance(head, str) or len(head) != lines):
        raise ValueError(f"head must be a string of {lines} characters (one per line of a "
                         f"{form}), got {head!r}")
    if not isinstance(text, str) or len(text) != 6 * lines:
        return False
    for k in range(lines):
        line = text[6 * k:6 * k + 6]
        if not all(is_cjk_ideograph(ch) for ch in line[:5]):
            return False
        if line[5] != (COMMA if k % 2 == 0 else PERIOD):
            return False
        if head is not None and line[0] != head[k]:
            return False
    return True


def read_stored_fields(meta):
    """What a saved ``CharLanguageModel`` holds beside its network, checked (both
    loaders, ``cyrnn.load`` and ``cyrnn.scoring.load``, read it here): ``chars``
    (sorted, distinct), ``mode``, ``max_length`` (bounded: ``sample``'s default length
    is twice it), ``loss_curve`` and ``train_time``, as keyword arguments of
    :class:`cyrnn.scoring.LanguageModelScorer`."""
    chars = meta["chars"]
    if not isinstance(chars, str) or len(set(chars)) != len(chars) \
            or list(chars) != sorted(chars):
        raise ValueError("bad vocabulary")
    mode = meta["mode"]
    if not isinstance(mode, str) or mode not in ("sequences", "text"):
        raise ValueError(f"bad mode {mode!r}")
    return dict(chars=chars, mode=mode,
                max_length=V.check_int(meta["max_length"], "max_length", minimum=1,
                                       maximum=MAX_STORED_LENGTH),
                loss_curve=[V.check_float(v, "loss_curve") for v in meta.get("loss_curve", [])],
                train_time=V.check_float(meta.get("train_time", 0.0), "train_time",
                                         minimum=0.0))


class CharSampler:
    """Vocabulary and sampling of a character model (a mix-in).

    The class that mixes it in provides ``_require_fitted()``, ``mode_``
    (``'sequences'`` or ``'text'``), ``max_length_`` (the longest training sequence),
    ``loss_curve_`` and ``train_time_`` (the training history), ``_sample_rng`` (the
    generator of calls without ``random_state``), ``_network()``: the
    ``Sequential([Embedding, recurrent layer, Dense])`` and whether its embedding is
    the one-hot identity, and ``_sampling_backend()``: the backend name to sample on.
    """

    # ------------------------------------------------------------------ vocabulary
    def _set_vocabulary(self, chars):
        self.chars_ = list(chars)
        self.vocab_size_ = len(self.chars_) + N_RESERVED
        self._index = {ch: i + N_RESERVED for i, ch in enumerate(self.chars_)}

    def encode(self, text):
        """Token ids of the characters of ``text`` (no markers).

        Raises ValueError naming the characters that are not in the vocabulary.
        """
        self._require_fitted()
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return np.array([self._index[ch] for ch in text], dtype=np.int64)
        except KeyError:
            unknown = sorted({ch for ch in text if ch not in self._index})
            raise ValueError(f"unknown characters {''.join(unknown)!r} ({unknown}): "
                             "not in the training data's vocabulary") from None

    def decode(self, ids):
        """The string of token ids (markers and padding are skipped)."""
        self._require_fitted()
        ids = np.asarray(ids)
        if ids.ndim == 1 and ids.size == 0:
            return ""
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"ids must be a 1-D sequence of integer token ids, got dtype "
                             f"{ids.dtype} shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.vocab_size_:
            raise ValueError(f"token ids must be in [0, {self.vocab_size_}), got "
                             f"{int(ids.min())} .. {int(ids.max())}")
        chars = self.chars_
        return "".join(chars[i - N_RESERVED] for i in ids.tolist() if i >= N_RESERVED)

    @property
    def vocabulary_(self):
        """Every token, by id: the three reserved markers, then the characters."""
        self._require_fitted()
        return list(RESERVED_NAMES) + list(self.chars_)

    @property
    def writes_poems(self):
        """Whether the vocabulary has the poems' punctuation (:meth:`sample_poem`)."""
        self._require_fitted()
        return COMMA in self._index and PERIOD in self._index

    def info(self):
        """A dict describing the fitted model (for ``cyrnn info``)."""
        self._require_fitted()
        model, one_hot = self._network()
        emb, rnn = model.layers[0], model.layers[1]
        curve = self.loss_curve_
        return {"cell": rnn.cell.name, "hidden_size": rnn.hidden_size,
                "num_layers": rnn.num_layers,
                "input": "one-hot" if one_hot else f"embedding ({emb.embedding_dim})",
                "mode": self.mode_, "vocab_size": self.vocab_size_,
                "parameters": int(model.params.size), "dtype": np.dtype(rnn.dtype).name,
                "epochs": len(curve), "final_loss": curve[-1] if curve else None,
                "train_time_s": round(float(getattr(self, "train_time_", 0.0)), 2),
                "poems": self.writes_poems}

    # ------------------------------------------------------------------ sampling
    def _sampling_rng(self, random_state):
        if random_state is None:
            return self._sample_rng
        return V.check_rng(random_state)

    @staticmethod
    def _check_sampling(temperature, top_k):
        temperature = V.check_float(temperature, "temperature", 0.0, include_min=False)
        if temperature < MIN_TEMPERATURE:  # logits / temperature would lose all precision
            raise ValueError(f"temperature must be >= {MIN_TEMPERATURE:g}, got {temperature}; "
                             "use top_k=1 for greedy sampling")
        top_k = V.check_int(top_k, "top_k", minimum=0, allow_none=True)
        return temperature, (top_k or 0)

    def _kernel_weights(self):
        """The arrays of the ``generate`` kernel contract (model dtype, contiguous)."""
        model, one_hot = self._network()
        emb, rnn, dense = model.layers
        p, L, H = rnn.params, rnn.num_layers, rnn.hidden_size
        GH = rnn.cell.n_gates * H
        w_ih0, b_ih0 = p["weight_ih_l0"], p["bias_ih_l0"]
        if one_hot:
            xp_table = w_ih0.T + b_ih0  # one-hot: the columns of W_ih
        else:
            xp_table = emb.params["weight"] @ w_ih0.T + b_ih0
        dt = rnn.dtype
        w_ih_rest = np.zeros((L - 1, GH, H), dt)
        b_ih_rest = np.zeros((L - 1, GH), dt)
        for layer in range(1, L):
            w_ih_rest[layer - 1] = p[f"weight_ih_l{layer}"]
            b_ih_rest[layer - 1] = p[f"bias_ih_l{layer}"]
        w_hh = np.stack([p[f"weight_hh_l{layer}"] for layer in range(L)])
        b_hh = np.stack([p[f"bias_hh_l{layer}"] for layer in range(L)])
        peep = None
        if rnn.cell.n_peepholes:
            peep = np.stack([p[rnn._peephole_name(layer, 0)] for layer in range(L)])
        return dict(xp_table=np.ascontiguousarray(xp_table, dt), w_ih_rest=w_ih_rest,
                    b_ih_rest=b_ih_rest, w_hh=w_hh, b_hh=b_hh, peep=peep,
                    w_out=np.ascontiguousarray(dense.params["weight"]),
                    b_out=np.ascontiguousarray(dense.params["bias"]))

    def _generate(self, n, prefix_ids, forced, banned, rng, temperature, top_k):
        """Run the prefix through the model, then the backend's generate kernel."""
        backend_name = self._sampling_backend()
        model = self._network()[0]
        rnn = model.layers[1]
        if not np.isfinite(model.params.data).all():
            # (the backends would sample from NaN probabilities each in its own way)
            raise ValueError("the model's parameters hold NaN or infinity: it cannot "
                             "sample; refit it or load a sound copy")
        weights = self._kernel_weights()
        # a top_k of the vocabulary's size or more keeps every character; clamped so
        # that any such Python int fits the compiled kernels' C integer
        top_k = min(top_k, weights["w_out"].shape[0])
        L, H = rnn.num_layers, rnn.hidden_size
        dt = rnn.dtype
        seq = np.concatenate([[BOS], prefix_ids]).astype(np.int64)
        h = np.zeros((L, n, H), dt)
        c = np.zeros((L, n, H), dt) if rnn.cell.has_cell_state else None
        if len(seq) > 1:  # the prefix: an ordinary forward pass, all but its last token
            _, (state,) = model.forward(seq[None, :-1], training=False, return_states=True)
            if c is not None:
                h[...], c[...] = state[0], state[1]
            else:
                h[...] = state
        start = np.full(n, seq[-1], np.int64)
        uniforms = rng.random(forced.shape)
        backend = get_backend(backend_name)
        generate = getattr(backend, "generate", None)
        if generate is None:  # (the reference's, which imports SciPy: only when needed)
            from .backends.numpy_backend import generate
        tokens, lengths = generate(rnn.cell, **weights, h=h, c=c, start=start,
                                   forced=np.ascontiguousarray(forced, np.int64),
                                   banned=banned, uniforms=uniforms, temperature=temperature,
                                   top_k=top_k, end_token=EOS)
        return tokens, lengths

    def sample(self, n=1, temperature=1.0, top_k=None, prefix="", max_length=None,
               random_state=None):
        """Invent ``n`` texts, one character at a time.

        Parameters
        ----------
        n : int, default 1
        temperature : float >= 0.0001, default 1
            Divides the logits: below 1 sharpens the distribution towards the most
            likely characters (-> 0: greedy), above 1 flattens it (more surprising,
            more errors).
        top_k : int, optional
            Sample only among the ``top_k`` most likely characters (``1``: greedy,
            deterministic; ties go to the lower id).
        prefix : str, default ''
            Every sample starts with it (it is run through the model first).
        max_length : int, optional
            Most characters generated after the prefix. Default: twice the longest
            training sequence (``'sequences'``), 200 (``'text'``).
        random_state : None, int or numpy Generator
            Seeds the draws (same seed, same samples, on every backend, from the
            model and from its scorer); None uses the object's own generator (a
            model's is seeded by its ``random_state``; a scorer's by fresh entropy).

        Returns
        -------
        list of str
            Each starts with ``prefix``. A ``'sequences'`` model stops at its end
            marker; a ``'text'`` model always writes ``max_length`` characters.
        """
        self._require_fitted()
        n = V.check_int(n, "n", minimum=0)
        temperature, top_k = self._check_sampling(temperature, top_k)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        prefix_ids = self.encode(prefix)
        if max_length is None:
            max_length = 2 * self.max_length_ if self.mode_ == "sequences" else 200
        max_length = V.check_int(max_length, "max_length", minimum=1)
        rng = self._sampling_rng(random_state)
        if n == 0:
            return []
        banned = np.zeros(self.vocab_size_, bool)
        banned[[PAD, BOS]] = True
        if self.mode_ == "text":
            banned[EOS] = True
        # in blocks of rows: the kernels' buffers (draws, tokens) take n x max_length
        # cells, which a long max_length made gigabytes for names of 20 characters. The
        # draws are taken row by row in the same order, so the samples do not change.
        rows = max(1, min(n, SAMPLE_CELLS // max_length))
        out = []
        for r0 in range(0, n, rows):
            k = min(rows, n - r0)
            forced = np.full((k, max_length), -1, np.int64)
            tokens, lengths = self._generate(k, prefix_ids, forced, banned, rng, temperature,
                                             top_k)
            out += [prefix + self.decode(tokens[i, :lengths[i]]) for i in range(k)]
        return out

    def sample_poem(self, n=1, form="quatrain", head=None, temperature=1.0, top_k=None,
                    random_state=None, start=None):
        """Write ``n`` five-character poems in a fixed form.

        The generation is constrained: every line has five Chinese characters
        (anything that is not a CJK ideograph, and the end marker, is excluded
        there), ``，`` is forced after lines 1, 3, 5, 7 and ``。`` after lines
        2, 4, 6, 8. Train on all five-character poems (4- and 8-line): the form
        comes from the constraint.

        Parameters
        ----------
        n : int, default 1
        form : {'quatrain', 'regulated'}, default 'quatrain'
            4 lines (绝句) or 8 lines (律诗) of five characters.
        head : str, optional
            Acrostic (藏头诗): the first character of each line, one per line
            (4 or 8 characters).
        temperature, top_k, random_state
            As in :meth:`sample`.
        start : str, optional
            The poem's first characters: 1 to 5 Chinese characters that begin its first
            line (the classic exercise: a poem starting with a given character, e.g.
            ``'春'``). Not with ``head``.

        Returns
        -------
        list of str
            Each poem as one string, e.g. ``'春眠不觉晓，处处闻啼鸟。...'``
            (24 characters for a quatrain, 48 for a regulated poem).
        """
        self._require_fitted()
        n = V.check_int(n, "n", minimum=0)
        lines = POEM_FORMS.get(form) if isinstance(form, str) else None
        if lines is None:
            raise ValueError(f"form must be one of {list(POEM_FORMS)}, got {form!r}")
        temperature, top_k = self._check_sampling(temperature, top_k)
        missing = [p for p in (COMMA, PERIOD) if p not in self._index]
        if missing:
            raise ValueError(f"the model's vocabulary lacks {''.join(missing)!r}: train it on "
                             "poems (e.g. cyrnn.datasets.load_tang_poems()) first")
        head_ids = start_ids = None
        if head is not None:
            check_poem_head(head, form)
            head_ids = self.encode(head)
        if start is not None:
            if head is not None:
                raise ValueError("give head (an acrostic) or start (the first line's "
                                 "beginning), not both")
            check_poem_start(start)
            start_ids = self.encode(start)
        banned = np.array([True] * N_RESERVED + [not is_cjk_ideograph(ch) for ch in self.chars_])
        if banned.all():
            raise ValueError("the model's vocabulary has no Chinese characters")
        rng = self._sampling_rng(random_state)
        if n == 0:
            return []
        T = 6 * lines
        forced = np.full((n, T), -1, np.int64)
        for k in range(lines):
            forced[:, 6 * k + 5] = self._index[COMMA if k % 2 == 0 else PERIOD]
            if head_ids is not None:
                forced[:, 6 * k] = head_ids[k]
        if start_ids is not None:
            forced[:, :len(start_ids)] = start_ids
        tokens, lengths = self._generate(n, np.zeros(0, np.int64), forced, banned, rng,
                                         temperature, top_k)
        return [self.decode(tokens[i, :lengths[i]]) for i in range(n)]
