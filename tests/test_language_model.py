"""CharLanguageModel: training, sampling (temperature, top-k, prefix, poems), perplexity,
persistence, and the two bundled-corpus criteria (dinosaur names, Tang poems)."""

import math
from collections import Counter

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from cyrnn import persistence
from conftest import BACKENDS  # the CPU backends
from cyrnn.datasets import load_dinos
from cyrnn.language_model import (BOS, EOS, PRESETS, CharLanguageModel, is_cjk_ideograph,
                                  is_poem, prepare_corpus)

NAMES20 = ["Aardonyx", "Abelisaurus", "Achelousaurus", "Acrocanthosaurus", "Aegyptosaurus",
           "Afrovenator", "Agilisaurus", "Alamosaurus", "Albertosaurus", "Allosaurus",
           "Alvarezsaurus", "Amargasaurus", "Ammosaurus", "Ampelosaurus", "Anchisaurus",
           "Ankylosaurus", "Antarctosaurus", "Apatosaurus", "Aragosaurus", "Archaeopteryx"]
POEMS = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。",
         "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
         "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
         "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",
         "红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
         "空山不见人，但闻人语响。返景入深林，复照青苔上。"]


@pytest.fixture(autouse=True)
def one_thread():
    """Small matrices: one BLAS/OpenMP thread is fastest and leaves the other core free."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def names_model():
    """A tiny LSTM that overfits 20 names."""
    with threadpool_limits(1):
        return CharLanguageModel(hidden_size=48, embedding_dim=16, learning_rate=0.02,
                                 batch_size=20, max_epochs=150, random_state=0).fit(NAMES20)


@pytest.fixture(scope="module")
def poem_model():
    with threadpool_limits(1):
        return CharLanguageModel(cell="gru", hidden_size=32, embedding_dim=16,
                                 learning_rate=0.02, batch_size=6, max_epochs=60,
                                 random_state=0).fit(POEMS)


def entropy(values):
    counts = np.array(list(Counter(values).values()), float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------- names: overfit, sampling
def test_overfits_and_reproduces_names(names_model):
    lm = names_model
    assert lm.loss_curve_[-1] < 0.3 < lm.loss_curve_[0]
    assert lm.perplexity(NAMES20) < 1.4
    cold = lm.sample(40, temperature=0.2, random_state=0)
    assert sum(s in NAMES20 for s in cold) >= 36
    assert lm.mode_ == "sequences" and lm.chars_ == sorted(set("".join(NAMES20)))
    assert lm.vocab_size_ == len(lm.chars_) + 3
    assert lm.vocabulary_[:3] == ["<pad>", "<s>", "</s>"]


def test_seeded_sampling_is_reproducible(names_model):
    a = names_model.sample(10, temperature=1.5, random_state=42)
    b = names_model.sample(10, temperature=1.5, random_state=42)
    c = names_model.sample(10, temperature=1.5, random_state=43)
    assert a == b and a != c
    gen = np.random.default_rng(7)
    assert names_model.sample(5, random_state=gen) != names_model.sample(5, random_state=gen)


def test_top_k_one_is_greedy(names_model):
    lm = names_model
    greedy = {s for seed in range(5) for s in lm.sample(4, top_k=1, random_state=seed)}
    assert len(greedy) == 1
    # the greedy path by hand: argmax of the model's own forward pass
    ids = [BOS]
    for _ in range(40):
        logits = lm.model_.forward(np.array([ids]), training=False)[0, -1]
        logits[[0, BOS]] = -np.inf
        nxt = int(np.argmax(logits))
        if nxt == EOS:
            break
        ids.append(nxt)
    assert greedy == {lm.decode(ids)}


def test_temperature_and_top_k_shape_the_distribution(names_model):
    """The character after 'A' (11 different ones in the corpus)."""
    lm = names_model

    def next_chars(**kw):
        return [s[1:2] for s in lm.sample(1500, prefix="A", max_length=1, random_state=1, **kw)]

    cold, normal, hot = (entropy(next_chars(temperature=t)) for t in (0.05, 1.0, 5.0))
    assert cold < 0.05 and normal > 1.5 and hot > normal + 0.3
    top3 = next_chars(temperature=5.0, top_k=3)
    assert len(set(top3)) == 3 and entropy(top3) <= math.log(3) + 1e-9
    # top_k keeps the k most likely characters
    logits = lm.model_.forward(np.array([[BOS, lm.encode("A")[0]]]), training=False)[0, -1]
    logits[[0, 1]] = -np.inf
    best = {lm.decode([i]) for i in np.argsort(-logits)[:3]}
    assert set(top3) == best


def test_prefix(names_model):
    out = names_model.sample(8, prefix="Allo", temperature=0.5, random_state=0)
    assert all(s.startswith("Allo") for s in out)
    assert "Allosaurus" in out
    with pytest.raises(ValueError, match="unknown characters.*'Z'"):
        names_model.sample(2, prefix="Zz")
    # max_length counts the characters after the prefix
    assert all(len(s) <= 4 + 3 for s in names_model.sample(5, prefix="Allo", max_length=3))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_backends_sample_identically(backend):
    lm = CharLanguageModel(cell="gru", hidden_size=16, num_layers=2, max_epochs=3,
                           dtype=np.float64, random_state=0).fit(NAMES20)
    out = {}
    for name in ("numpy", backend):
        lm.backend = name
        out[name] = (lm.sample(20, temperature=1.2, random_state=3),
                     lm.sample(10, top_k=4, prefix="Al", random_state=4),
                     # a top_k beyond any C integer: every character, as top_k=None
                     lm.sample(5, top_k=2**63, random_state=5))
    assert out["numpy"] == out[backend]
    assert out["numpy"][2] == lm.sample(5, random_state=5)
    # parameters gone non-finite: one clear error on every backend (the reference
    # raised IndexError inside sampling, the compiled kernels returned empty strings)
    lm.model_.params.data[3] = np.nan
    for name in ("numpy", backend):
        lm.backend = name
        with pytest.raises(ValueError, match="NaN or infinity"):
            lm.sample(2, random_state=0)


def test_one_hot_input_is_a_frozen_identity():
    lm = CharLanguageModel(embedding_dim=None, hidden_size=16, max_epochs=5,
                           random_state=0).fit(NAMES20)
    emb = lm.model_.layers[0]
    np.testing.assert_array_equal(emb.params["weight"], np.eye(lm.vocab_size_))
    assert lm.loss_curve_[-1] < lm.loss_curve_[0]
    # the generate kernel's input table is W_ih^T + b_ih
    w = lm._kernel_weights()
    rnn = lm.model_.layers[1]
    np.testing.assert_allclose(w["xp_table"], rnn.params["weight_ih_l0"].T
                               + rnn.params["bias_ih_l0"])
    assert len(lm.sample(3, random_state=0)) == 3


def test_perplexity_and_errors(names_model):
    lm = names_model
    assert math.isclose(lm.perplexity(NAMES20), math.exp(lm.per_char_loss(NAMES20)))
    assert math.isclose(lm.perplexity("Allosaurus"), lm.perplexity(["Allosaurus"]))
    untrained = CharLanguageModel(hidden_size=8, max_epochs=0, random_state=0).fit(NAMES20)
    assert 0.6 < untrained.perplexity(NAMES20) / untrained.vocab_size_ < 1.5
    with pytest.raises(ValueError, match=r"unknown characters '#\?'"):
        lm.perplexity(["Allo#saurus?"])
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError, match="not fitted"):
        CharLanguageModel().sample(1)
    with pytest.raises(ValueError, match="empty"):
        CharLanguageModel().fit([])
    with pytest.raises(TypeError):
        CharLanguageModel().fit(["ok", 3])
    with pytest.raises(ValueError, match="cell"):
        CharLanguageModel(cell="transformer").fit(NAMES20)
    with pytest.raises(ValueError, match="temperature"):
        lm.sample(1, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        lm.sample(1, top_k=-1)
    assert lm.sample(0) == []


def test_long_text_with_truncated_bptt():
    text = "the quick brown fox jumps over the lazy dog. " * 40
    lm = CharLanguageModel(hidden_size=32, embedding_dim=8, learning_rate=0.02, batch_size=4,
                           bptt=25, max_epochs=15, random_state=0).fit(text)
    assert lm.mode_ == "text"
    assert lm.loss_curve_[-1] < 0.5 * lm.loss_curve_[0]
    assert lm.perplexity(text[:300]) < 2.0
    out = lm.sample(2, prefix="the quick ", max_length=30, temperature=0.3, random_state=0)
    assert all(len(s) == 40 and s.startswith("the quick ") for s in out)
    assert "brown fox" in out[0]


# ---------------------------------------------------------------- Chinese and poems
def test_chinese_round_trip(poem_model, tmp_path):
    lm = poem_model
    assert "，" in lm.chars_ and "。" in lm.chars_
    samples = lm.sample(3, temperature=0.5, random_state=0)
    assert all(set(s) <= set(lm.chars_) for s in samples)
    path = tmp_path / "poems.cyrnn"
    assert lm.save(path) == path
    loaded = persistence.load(path)
    assert isinstance(loaded, CharLanguageModel) and loaded.chars_ == lm.chars_
    assert loaded.sample(3, temperature=0.5, random_state=0) == samples
    assert loaded.sample_poem(2, head="春白千红", random_state=1) == \
        lm.sample_poem(2, head="春白千红", random_state=1)
    assert math.isclose(loaded.perplexity(POEMS), lm.perplexity(POEMS), rel_tol=1e-6)
    assert loaded.get_params() == {**lm.get_params(), "dtype": "float32"}
    kind, meta, _ = persistence.load_archive(path)
    assert kind == "cyrnn.CharLanguageModel" and meta["mode"] == "sequences"


def test_poem_forms(poem_model):
    lm = poem_model
    for form, lines in (("quatrain", 4), ("regulated", 8)):
        poems = lm.sample_poem(6, form=form, temperature=1.5, random_state=0)
        assert all(is_poem(p, form) and len(p) == 6 * lines for p in poems)
        assert all(p[5] == "，" and p[11] == "。" for p in poems)
        assert all(is_cjk_ideograph(ch) for p in poems for ch in p if ch not in "，。")
    heads = lm.sample_poem(5, head="春白千红", temperature=1.0, random_state=0)
    assert all(is_poem(p, "quatrain", head="春白千红") for p in heads)
    eight = lm.sample_poem(2, form="regulated", head="春白千红空床欲孤")
    assert all(is_poem(p, "regulated", head="春白千红空床欲孤") for p in eight)
    # the model memorised these poems: cold greedy sampling gives one of them back
    assert lm.sample_poem(1, top_k=1)[0] in POEMS


def test_poem_errors(poem_model, names_model):
    with pytest.raises(ValueError, match="one character per line"):
        poem_model.sample_poem(1, head="春夏")
    with pytest.raises(ValueError, match="unknown characters '夏'"):
        poem_model.sample_poem(1, head="春夏千红")
    with pytest.raises(ValueError, match="form"):
        poem_model.sample_poem(1, form="sonnet")
    with pytest.raises(ValueError, match="poems"):
        names_model.sample_poem(1)


def test_persistence_errors(names_model, tmp_path):
    path = tmp_path / "m.cyrnn"
    names_model.save(path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "bad.cyrnn"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        persistence.load(bad)
    loaded = persistence.load(path)
    assert loaded.sample(5, random_state=0) == names_model.sample(5, random_state=0)
    assert loaded.info()["vocab_size"] == names_model.vocab_size_


# ---------------------------------------------------------------- the bundled corpora
def test_dinosaur_names_with_default_settings():
    """Criterion: the defaults (= PRESETS['dinos']) on 90% of the names; held-out
    perplexity reported; >= 90% of 100 samples at T = 0.8 new and 4..20 letters."""
    assert PRESETS["dinos"] == {k: v for k, v in CharLanguageModel().get_params().items()
                                if k in PRESETS["dinos"]}
    names = load_dinos()
    order = np.random.default_rng(0).permutation(len(names))
    held, train = [names[i] for i in order[:154]], [names[i] for i in order[154:]]
    lm = CharLanguageModel(random_state=0).fit(train)
    ppl = lm.perplexity([n for n in held if set(n) <= set(lm.chars_)])
    samples = lm.sample(100, temperature=0.8, random_state=1)
    good = [s for s in samples if s not in set(train) and 4 <= len(s) <= 20]
    print(f"dinosaurs: held-out perplexity {ppl:.2f}, {len(good)}% new and 4-20 letters, "
          f"trained in {lm.train_time_:.1f} s; e.g. {samples[:5]}")
    assert ppl < 6.5
    assert len(good) >= 90


def unigram_perplexity(train, held):
    counts = Counter("".join(train))
    counts["</s>"] = len(train)
    total, V = sum(counts.values()), len(counts)
    nll = -sum(math.log((counts[c] + 1) / (total + V)) for p in held for c in [*p, "</s>"])
    return math.exp(nll / sum(len(p) + 1 for p in held))


def test_tang_poems_reduced_budget():
    """Criterion (reduced budget: the default takes about a minute): every sample has the
    exact form, held-out perplexity clearly below a unigram model's, acrostic heads first."""
    settings = dict(PRESETS["tang"])
    pool = prepare_corpus("tang", max_vocab=settings.pop("max_vocab"))
    settings.pop("max_samples")
    order = np.random.default_rng(0).permutation(len(pool))
    held, train = [pool[i] for i in order[:200]], [pool[i] for i in order[200:1000]]
    settings.update(max_epochs=4, batch_size=16, hidden_size=64)
    lm = CharLanguageModel(**settings, random_state=0).fit(train)
    held = [p for p in held if set(p) <= set(lm.chars_)]
    ppl, uni = lm.perplexity(held), unigram_perplexity(train, held)
    print(f"tang (800 poems, 4 epochs): held-out perplexity {ppl:.1f} vs unigram {uni:.1f}")
    assert ppl < 0.7 * uni  # measured: 210 vs 434
    for form in ("quatrain", "regulated"):
        assert all(is_poem(p, form) for p in lm.sample_poem(10, form, random_state=0))
    assert all(is_poem(p, "quatrain", head="春风明月")
               for p in lm.sample_poem(10, head="春风明月", temperature=1.3, random_state=1))


def test_prepare_corpus_and_is_poem():
    pool = prepare_corpus("tang", max_vocab=2000)
    assert len(pool) == 5733
    common = Counter("".join(prepare_corpus("tang")))
    top = {c for c, _ in sorted(common.items(), key=lambda kv: (-kv[1], kv[0]))[:2000]}
    assert all(set(p) <= top for p in pool)
    sub = prepare_corpus("tang", max_samples=100, max_vocab=2000, random_state=1)
    assert len(sub) == 100 and set(sub) <= set(pool)
    assert sub == prepare_corpus("tang", max_samples=100, max_vocab=2000, random_state=1)
    assert len(prepare_corpus("dinos")) == 1543
    with pytest.raises(ValueError, match="unknown corpus"):
        prepare_corpus("sonnets")
    assert is_poem(POEMS[0]) and is_poem(POEMS[0], head="床疑举低")
    assert not is_poem(POEMS[0], head="床疑举高") and not is_poem(POEMS[0], "regulated")
    assert not is_poem(POEMS[0].replace("，", ",", 1))
    assert not is_poem("床前明月A，" + POEMS[0][6:])
    # bad arguments are ValueErrors naming them (were KeyError / IndexError)
    with pytest.raises(ValueError, match="form must be one of"):
        is_poem(POEMS[0], "sonnet")
    with pytest.raises(ValueError, match="head must be a string of 4 characters"):
        is_poem(POEMS[0], head="床")


def test_decode_checks_the_ids(names_model):
    lm = names_model
    assert lm.decode([]) == "" and lm.decode(np.array([0, 1, 2])) == ""
    for bad, message in [([lm.vocab_size_], "token ids must be in"), ([-1], "must be in"),
                         ([1.5], "integer token ids"), ([[3]], "1-D")]:
        with pytest.raises(ValueError, match=message):
            lm.decode(bad)


# ---------------------------------------------------------------- the estimator contract
def test_init_only_stores_and_fit_validates():
    gen = np.random.default_rng(0)
    bad = CharLanguageModel(cell="transformer", hidden_size=0, random_state=gen)
    assert bad.cell == "transformer" and bad.hidden_size == 0 and bad.random_state is gen
    assert not any(k.endswith("_") for k in vars(bad))  # no learned state before fit
    for params, error, match in [
            (dict(cell="transformer"), ValueError, "cell"),
            (dict(hidden_size=0), ValueError, "hidden_size"),
            (dict(optimizer="adagrad"), ValueError, "optimizer must be one of"),
            (dict(peephole="yes"), TypeError, "peephole must be a bool"),
            (dict(cell="gru", peephole=True), ValueError, "peephole=True needs cell='lstm'"),
            (dict(random_state=-1), ValueError, "random_state")]:
        lm = CharLanguageModel(**params)  # accepted here ...
        for fit, data in ((lm.fit, NAMES20[:3]), (lm.fit_text, "some text")):
            with pytest.raises(error, match=match):  # ... refused by fit, with the old message
                fit(data)
        assert not hasattr(lm, "model_")


def test_get_params_set_params_and_clone():
    from sklearn.base import clone

    lm = CharLanguageModel(cell="gru", hidden_size=12, embedding_dim=None, max_epochs=2,
                           random_state=3)
    params = lm.get_params()
    assert list(params) == sorted(params) and params["hidden_size"] == 12
    assert params["embedding_dim"] is None and params["dtype"] is np.float32
    assert CharLanguageModel(**params).get_params() == params
    assert lm.set_params(hidden_size=7, verbose=True) is lm
    assert lm.get_params() == {**params, "hidden_size": 7, "verbose": True}
    with pytest.raises(ValueError, match="Invalid parameter"):
        lm.set_params(hidden=3)
    lm.fit(NAMES20[:5])
    twin = clone(lm)
    assert type(twin) is CharLanguageModel and twin.get_params() == lm.get_params()
    assert not hasattr(twin, "model_") and not hasattr(twin, "loss_curve_")
    np.testing.assert_array_equal(twin.fit(NAMES20[:5]).model_.params.data,
                                  lm.model_.params.data)  # same parameters, same fit
    assert repr(lm) == ("CharLanguageModel(cell='gru', hidden_size=7, embedding_dim=None, "
                        "max_epochs=2, random_state=3, verbose=True)")


def test_ends_a_pipeline_and_takes_a_random_state_object():
    """``fit(texts, y=None)`` (scikit-learn's form for models without targets), so the
    model can be a Pipeline's last step; a RandomState seeds it as the estimators'."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    kw = dict(hidden_size=8, max_epochs=2)
    pipe = make_pipeline(FunctionTransformer(lambda texts: [t.lower() for t in texts]),
                         CharLanguageModel(random_state=0, **kw)).fit(NAMES20[:6])
    lm = pipe[-1]
    assert set(lm.chars_) == set("".join(NAMES20[:6]).lower())
    direct = CharLanguageModel(random_state=0, **kw).fit([t.lower() for t in NAMES20[:6]])
    np.testing.assert_array_equal(lm.model_.params.data, direct.model_.params.data)
    a, b = (CharLanguageModel(random_state=np.random.RandomState(4), **kw).fit(NAMES20[:6])
            for _ in range(2))
    np.testing.assert_array_equal(a.model_.params.data, b.model_.params.data)
    assert a.sample(3) == b.sample(3)


@pytest.mark.parametrize("data", [NAMES20[:6], "the quick brown fox " * 5])
def test_learned_attributes_end_with_an_underscore(data):
    from sklearn.utils.validation import check_is_fitted

    lm = CharLanguageModel(hidden_size=8, embedding_dim=4, batch_size=2, bptt=10,
                           max_epochs=2, random_state=0)
    before = set(vars(lm))
    lm.fit(data)
    check_is_fitted(lm)
    learned = {k for k in vars(lm) if k.endswith("_")}
    assert learned == {"chars_", "vocab_size_", "mode_", "max_length_", "model_",
                       "loss_curve_", "train_time_"}
    assert set(vars(lm)) - before - learned == {"_index", "_optim", "_rng", "_sample_rng",
                                                "_arch"}
    assert len(lm.loss_curve_) == 2 and lm.train_time_ > 0
    assert lm.mode_ == ("sequences" if isinstance(data, list) else "text")
    assert lm.get_params() == CharLanguageModel(**lm.get_params()).get_params()


@pytest.mark.parametrize("change", [{"hidden_size": 32}, {"cell": "gru"}, {"dtype": "float64"},
                                    {"embedding_dim": None}, {"num_layers": 2},
                                    {"train_compute": "bfloat16"}])
def test_save_after_set_params_keeps_the_fitted_network(change, tmp_path, monkeypatch):
    # set_params after fit changes the parameters, not the network: the file stores the
    # network as fitted (it was written with the new parameters and refused on load)
    from cyrnn import generation, scoring

    lm = CharLanguageModel(hidden_size=16, embedding_dim=4, max_epochs=2,
                           random_state=np.int64(3)).fit(NAMES20[:6])
    lm.set_params(**change)
    path = lm.save(tmp_path / "lm.cyrnn")
    loaded = persistence.load(path)
    assert {k: v for k, v in loaded.get_params().items() if k != "dtype"} == \
        {k: v for k, v in lm.get_params().items() if k != "dtype"}
    assert loaded.random_state == 3  # a NumPy integer seed is kept (it was dropped)
    assert loaded.sample(3, random_state=1) == lm.sample(3, random_state=1)
    assert loaded.info()["hidden_size"] == lm.info()["hidden_size"] == 16
    assert loaded.info()["input"] == "embedding (4)"
    ids = np.array([[1, 4, 5, 6]])
    logits = lm.model_.forward(ids).astype(np.float64)  # the fitted network's
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(scoring.load(path).predict_proba(ids),
                               expected / expected.sum(-1, keepdims=True), rtol=1e-6)
    # parameters valid together but not with the fitted network (float64 weights)
    lm64 = CharLanguageModel(hidden_size=8, embedding_dim=4, max_epochs=1, dtype="float64",
                             random_state=0).fit(NAMES20[:4])
    lm64.set_params(dtype="float32", train_compute="bfloat16")
    back = persistence.load(lm64.save(tmp_path / "lm64.cyrnn"))
    assert back.train_compute == "bfloat16" and back.model_.dtype == np.float64
    assert back.sample(2, random_state=1) == lm64.sample(2, random_state=1)
    # the longest training sequence is stored up to the loader's bound
    monkeypatch.setattr(generation, "MAX_STORED_LENGTH", 5)
    long = CharLanguageModel(hidden_size=4, embedding_dim=2, max_epochs=1,
                             random_state=0).fit(["abcdefgh"])
    assert long.max_length_ == 5
    # ... and that bound is one value, which the loaders read too
    monkeypatch.setattr(generation, "MAX_STORED_LENGTH", 4)
    for load in (persistence.load, scoring.load):
        with pytest.raises(ValueError, match="max_length"):
            load(long.save(tmp_path / "long.cyrnn"))


def test_sampling_runs_in_blocks_of_rows_with_the_same_samples(monkeypatch):
    """A long max_length made every row's buffers that long (-n 100 --max-length 1e6:
    2.5 GB for names of 20 characters); rows now run in blocks, drawing in the same
    order, so the samples are those of one block."""
    from cyrnn import generation

    lm = CharLanguageModel(hidden_size=8, max_epochs=1, random_state=0).fit(NAMES20)
    whole = lm.sample(30, max_length=25, random_state=5)
    monkeypatch.setattr(generation, "SAMPLE_CELLS", 25 * 7)
    assert lm.sample(30, max_length=25, random_state=5) == whole
    monkeypatch.setattr(generation, "SAMPLE_CELLS", 1)  # one row per block
    assert lm.sample(30, max_length=25, random_state=5) == whole


def test_clip_value_clips_every_gradient_entry(tmp_path):
    """The course clips the dinosaur model's gradients by value; the language model
    took clip_norm only."""
    from cyrnn import optim

    lm = CharLanguageModel(hidden_size=8, max_epochs=1, random_state=0, clip_value=0.5,
                           clip_norm=None, optimizer="sgd", learning_rate=0.1)
    assert lm._check_params() is None
    seen = []
    real = optim.clip_by_value

    def spy(grad, value):
        seen.append(value)
        out = real(grad, value)
        assert np.abs(grad).max() <= value
        return out

    import unittest.mock
    with unittest.mock.patch.object(optim, "clip_by_value", spy):
        lm.fit(NAMES20)
    assert seen and set(seen) == {0.5}
    lm.save(tmp_path / "lm.cyrnn")
    assert persistence.load(tmp_path / "lm.cyrnn").clip_value == 0.5
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="clip_value"):
            CharLanguageModel(clip_value=bad).fit(NAMES20)
    with pytest.raises(ValueError, match="set clip_norm or clip_value$"):
        CharLanguageModel(hidden_size=8, optimizer="sgd", learning_rate=1e6, clip_norm=None,
                          max_epochs=3, random_state=0).fit(NAMES20)


def test_poems_that_begin_with_given_characters():
    """The classic exercise: a poem starting with a given character (sample_poem's
    acrostic head fixed every line's first character only)."""
    from cyrnn.datasets import load_tang_poems
    from cyrnn.language_model import is_poem

    poems = load_tang_poems()[:300]
    lm = CharLanguageModel(hidden_size=16, embedding_dim=8, max_epochs=1,
                           random_state=0).fit(poems)
    first = poems[0][0]
    for start in (first, poems[0][:3]):
        out = lm.sample_poem(5, start=start, random_state=1)
        assert all(p.startswith(start) and is_poem(p) for p in out)
    assert lm.sample_poem(3, start=first, random_state=2) == \
        lm.sample_poem(3, start=first, random_state=2)
    for bad, err in (("", ValueError), ("春夏秋冬春夏", ValueError), ("ab", ValueError),
                     (3, TypeError)):
        with pytest.raises(err, match="start"):
            lm.sample_poem(1, start=bad)
    with pytest.raises(ValueError, match="not both"):
        lm.sample_poem(1, start=first, head=poems[0][0] * 4)
