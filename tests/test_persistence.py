"""The no-pickle archive format and estimator save / load."""

import io
import json
import pickle
import zipfile

import numpy as np
import pytest

from cyrnn import persistence
from cyrnn.estimators import ESTIMATORS, GRUClassifier, LSTMRegressor
from cyrnn.persistence import load, load_archive, register_loader, save_archive

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ARRAYS = {"weights": np.arange(6, dtype=np.float32).reshape(2, 3),
          "ids": np.array([3, 1, 2]), "names": np.array(["a", "bc"]),
          "nested/flag": np.array(True)}
META = {"hello": "world", "numbers": [1, 2.5, None], "inf": float("inf")}


def rewrite(path, changes, drop=()):
    """Copy the zip at ``path`` with some entries replaced (name -> bytes) or dropped."""
    with zipfile.ZipFile(path) as src:
        entries = {info.filename: src.read(info.filename) for info in src.infolist()}
    for name in drop:
        del entries[name]
    entries.update(changes)
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in entries.items():
            dst.writestr(name, data)


def header_npy(header):
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(header).encode(), np.uint8))
    return buf.getvalue()


def read_header(path):
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(npz["__cyrnn__"].tobytes())


def test_round_trip_and_plain_npz(tmp_path):
    path = tmp_path / "thing.cyrnn"
    assert save_archive(path, "test.kind", META, ARRAYS) == path
    assert path.exists() and not (tmp_path / "thing.cyrnn.npz").exists()
    kind, meta, arrays = load_archive(path)
    assert kind == "test.kind" and meta["hello"] == "world" and meta["inf"] == float("inf")
    assert arrays.keys() == ARRAYS.keys()
    for name, value in ARRAYS.items():
        np.testing.assert_array_equal(arrays[name], value)
        assert arrays[name].dtype == value.dtype
    with np.load(path, allow_pickle=False) as npz:  # an ordinary npz, no pickle inside
        assert set(npz.files) == {"__cyrnn__", *ARRAYS}
    header = read_header(path)
    assert header["format_version"] == persistence.FORMAT_VERSION == 1
    assert header["kind"] == "test.kind" and header["cyrnn_version"]
    assert len(header["sha256"]) == 64
    assert header["arrays"]["weights"] == {"dtype": "<f4", "shape": [2, 3]}


def test_file_objects(tmp_path):
    buf = io.BytesIO()
    save_archive(buf, "k", {}, {"a": np.ones(2)})
    buf.seek(0)
    assert load_archive(buf)[0] == "k"


def test_truncated_files_raise_value_error(tmp_path):
    path = tmp_path / "a.cyrnn"
    save_archive(path, "k", META, ARRAYS)
    raw = path.read_bytes()
    for cut in (10, len(raw) // 3, len(raw) // 2, len(raw) - 30):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError):
            load_archive(path)


def test_tampered_metadata_raises(tmp_path):
    path = tmp_path / "a.cyrnn"
    save_archive(path, "k", {"lr": 0.1}, ARRAYS)
    header = read_header(path)
    header["metadata"]["lr"] = 0.2
    rewrite(path, {"__cyrnn__.npy": header_npy(header)})
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        load_archive(path)


def test_tampered_array_raises(tmp_path):
    path = tmp_path / "a.cyrnn"
    save_archive(path, "k", META, ARRAYS)
    buf = io.BytesIO()
    np.save(buf, ARRAYS["weights"] + 1)
    rewrite(path, {"weights.npy": buf.getvalue()})
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        load_archive(path)


def test_manifest_mismatches_raise(tmp_path):
    path = tmp_path / "a.cyrnn"
    save_archive(path, "k", META, ARRAYS)
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    rewrite(path, {"extra.npy": buf.getvalue()})
    with pytest.raises(ValueError, match="do not match the manifest"):
        load_archive(path)
    save_archive(path, "k", META, ARRAYS)
    rewrite(path, {}, drop=["ids.npy"])
    with pytest.raises(ValueError, match="do not match the manifest"):
        load_archive(path)
    save_archive(path, "k", META, ARRAYS)
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 3), np.float64))
    rewrite(path, {"weights.npy": buf.getvalue()})
    with pytest.raises(ValueError, match="manifest says"):
        load_archive(path)


def test_pickled_entries_are_refused(tmp_path):
    path = tmp_path / "a.cyrnn"
    save_archive(path, "k", META, ARRAYS)
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    rewrite(path, {"ids.npy": buf.getvalue()})
    with pytest.raises(ValueError):
        load_archive(path)
    with pytest.raises(ValueError, match="cannot be stored without pickle"):
        save_archive(path, "k", {}, {"objects": np.array([object()], dtype=object)})
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a cyrnn archive"):
        load_archive(path)


def test_future_version_and_bad_header(tmp_path):
    path = tmp_path / "a.cyrnn"
    save_archive(path, "k", META, ARRAYS)
    header = read_header(path)
    header["format_version"] = 99
    rewrite(path, {"__cyrnn__.npy": header_npy(header)})
    with pytest.raises(ValueError, match="newer cyrnn"):
        load_archive(path)
    rewrite(path, {"__cyrnn__.npy": header_npy(["not", "an", "object"])})
    with pytest.raises(ValueError, match="not a JSON object"):
        load_archive(path)
    with open(path, "wb") as fh:
        np.savez(fh, weights=np.ones(3))
    with pytest.raises(ValueError, match="no cyrnn header"):
        load_archive(path)


def test_bad_arguments_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_archive(tmp_path / "missing.cyrnn")
    with pytest.raises(ValueError, match="array name"):
        save_archive(tmp_path / "x", "k", {}, {"bad name!": np.ones(1)})
    with pytest.raises(TypeError, match="JSON"):
        save_archive(tmp_path / "x", "k", {"a": object()}, {})
    with pytest.raises(ValueError, match="kind"):
        save_archive(tmp_path / "x", "", {}, {})
    assert not list(tmp_path.glob(".cyrnn-*"))  # no temporary files left behind


def test_registry_dispatch(tmp_path):
    path = tmp_path / "a.cyrnn"
    register_loader("test.echo", lambda meta, arrays: (meta["x"], arrays["v"].sum()))
    save_archive(path, "test.echo", {"x": 4}, {"v": np.arange(4)})
    assert load(path) == (4, 6)
    save_archive(path, "test.unknown", {}, {})
    with pytest.raises(ValueError, match="unknown archive kind 'test.unknown'"):
        load(path)


# ---------------------------------------------------------------------------
# estimators
# ---------------------------------------------------------------------------
def data(cls, seed=0):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(int(rng.integers(2, 8)), 2)) for _ in range(30)]
    y = np.array([x[:, 0].sum() for x in X])
    if cls.__name__.endswith("Classifier"):
        y = np.where(y > 0, "up", "down")
    return X, y


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_estimator_save_load(cls, tmp_path):
    X, y = data(cls)
    est = cls(hidden_size=6, max_iter=3, random_state=0).fit(X, y)
    path = tmp_path / "model.cyrnn"
    assert est.save(path) == path
    loaded = load(path)
    assert type(loaded) is cls and loaded.get_params() == est.get_params()
    method = "predict_proba" if hasattr(est, "predict_proba") else "predict"
    np.testing.assert_array_equal(getattr(est, method)(X), getattr(loaded, method)(X))
    for attr in ("n_features_in_", "n_iter_", "loss_curve_", "best_loss_",
                 "validation_scores_"):
        assert getattr(loaded, attr) == getattr(est, attr)
    if hasattr(est, "classes_"):
        np.testing.assert_array_equal(loaded.classes_, est.classes_)
    # optimizer and random state come along: training continues identically
    est.partial_fit(X, y)
    loaded.partial_fit(X, y)
    np.testing.assert_array_equal(est.model_.params.data, loaded.model_.params.data)


@pytest.mark.parametrize("change", [{"hidden_size": 8}, {"dtype": "float64"},
                                    {"bidirectional": True}, {"reset_after": False},
                                    {"num_layers": 2, "dropout": 0.5}])
def test_save_after_set_params_loads_as_a_pickle_does(change, tmp_path):
    # set_params after fit changes the parameters, not the fitted model: the file
    # loads with the new parameters and the fitted model, as a pickle round trip
    X, y = data(GRUClassifier)
    est = GRUClassifier(hidden_size=4, max_iter=2, random_state=0).fit(X, y)
    est.set_params(**change)
    loaded = load(est.save(tmp_path / "m.cyrnn"))
    unpickled = pickle.loads(pickle.dumps(est))
    assert loaded.get_params() == unpickled.get_params() == est.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), unpickled.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    for obj in (loaded, unpickled):  # a changed architecture cannot continue
        with pytest.raises(ValueError, match="partial_fit needs the fitted architecture"):
            obj.partial_fit(X, y)
    loaded.fit(X, y)  # a new fit takes the new parameters
    np.testing.assert_array_equal(loaded.predict_proba(X), clone_fit(est, X, y))


def clone_fit(est, X, y):
    from sklearn.base import clone
    return clone(est).fit(X, y).predict_proba(X)


def test_estimator_save_load_tokens_string_classes_and_params(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 30, size=int(rng.integers(2, 9))) for _ in range(40)]
    labels = np.array(["b", "n1", "n2.5"], dtype=object)[rng.integers(0, 3, 40)]
    est = GRUClassifier(vocab_size=30, embedding_dim=4, hidden_size=5, max_iter=2,
                        class_weight={"b": 2.0, "n1": 1.0, "n2.5": 0.5}, dtype=np.float64,
                        random_state=np.random.default_rng(3), reset_after=False).fit(seqs, labels)
    path = tmp_path / "clf.cyrnn"
    est.save(path)
    loaded = load(path)
    np.testing.assert_array_equal(loaded.classes_, est.classes_)
    assert loaded.class_weight == est.class_weight and loaded.dtype is np.float64
    assert loaded.random_state is None  # a Generator is stored as its fitted state only
    np.testing.assert_array_equal(loaded.predict_proba(seqs), est.predict_proba(seqs))
    np.testing.assert_array_equal(loaded.predict(seqs), est.predict(seqs))
    # object-dtype classes of plain values are stored as JSON, not pickled
    est.classes_ = est.classes_.astype(object)
    est.save(path)
    loaded = load(path)
    assert loaded.classes_.dtype == object
    np.testing.assert_array_equal(loaded.predict(seqs), est.predict(seqs))
    est.classes_ = np.array([object(), object(), object()], dtype=object)
    with pytest.raises(TypeError, match="cannot be saved without pickle"):
        est.save(path)


def test_estimator_archive_is_checked(tmp_path):
    X, y = data(LSTMRegressor)
    est = LSTMRegressor(hidden_size=4, max_iter=2, random_state=0).fit(X, y)
    path = tmp_path / "m.cyrnn"
    est.save(path)
    kind, meta, arrays = load_archive(path)
    assert kind == "cyrnn.LSTMRegressor" and meta["class"] == "LSTMRegressor"
    arrays["params"] = arrays["params"][:-1]  # consistent checksum, wrong content
    save_archive(path, kind, meta, arrays)
    with pytest.raises(ValueError, match="parameter vector has .* values, the architecture needs"):
        load(path)
    meta["params"]["hidden_size"] = -1
    save_archive(path, kind, meta, load_archive(tmp_path / "m.cyrnn")[2])
    with pytest.raises(ValueError, match="invalid parameters"):
        load(path)
    meta["params"]["no_such_param"] = 1
    save_archive(path, kind, meta, {})
    with pytest.raises(ValueError, match="unknown parameters"):
        load(path)
    save_archive(path, "cyrnn.GRURegressor", {"class": "LSTMRegressor"}, {})
    with pytest.raises(ValueError, match="does not hold a GRURegressor"):
        load(path)
    with pytest.raises(Exception, match="not fitted"):
        LSTMRegressor().save(tmp_path / "unfitted.cyrnn")


# ---------------------------------------------------------------------------
# crafted files: nothing larger than the file is allocated, no odd names
# ---------------------------------------------------------------------------
def _npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_compressed_entries_are_refused_no_zip_bomb(tmp_path):
    # A deflated entry can expand ~1000x: the loader must refuse it before reading,
    # even when the header, manifest and digest are all consistent.
    path = tmp_path / "bomb.cyrnn"
    save_archive(path, "k", {}, {"big": np.zeros(1_000_000)})
    with zipfile.ZipFile(path) as src:
        entries = {i.filename: src.read(i.filename) for i in src.infolist()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name, payload in entries.items():
            dst.writestr(name, payload)
    assert path.stat().st_size < 100_000  # 8 MB of zeros in a few KB
    with pytest.raises(ValueError, match="compressed"):
        load_archive(path)


def test_huge_npy_header_shape_is_refused_before_allocation(tmp_path, monkeypatch):
    path = tmp_path / "a.cyrnn"
    save_archive(path, "k", {}, {"w": np.zeros(4)})
    header = read_header(path)
    header["arrays"]["w"]["shape"] = [10**15]  # the manifest agrees with the lie
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": (10**15,)})
    lie = buf.getvalue() + np.zeros(4).tobytes()  # 4 values of data, 10**15 claimed
    rewrite(path, {"__cyrnn__.npy": header_npy(header), "w.npy": lie})
    real_empty = np.empty
    monkeypatch.setattr(np, "empty", lambda shape, *a, **k: pytest.fail("allocated")
                        if np.prod(shape) > 10**6 else real_empty(shape, *a, **k))
    with pytest.raises(ValueError, match="describes 8000000000000000"):
        load_archive(path)


@pytest.mark.parametrize("name", ["../evil", "/abs", "a/../b", "a//b", ".hidden", "a/"])
def test_path_like_array_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="array name"):
        save_archive(tmp_path / "x", "k", {}, {name: np.ones(1)})
    path = tmp_path / "a.cyrnn"
    save_archive(path, "k", {}, {"ok": np.ones(1)})
    header = read_header(path)
    header["arrays"] = {name: header["arrays"]["ok"]}
    rewrite(path, {"__cyrnn__.npy": header_npy(header), f"{name}.npy": _npy_bytes(np.ones(1))},
            drop=["ok.npy"])
    with pytest.raises(ValueError, match="array name"):
        load_archive(path)


def test_manifest_dtype_must_be_a_plain_dtype_string(tmp_path):
    path = tmp_path / "a.cyrnn"
    save_archive(path, "k", {}, {"w": np.zeros(2)})
    header = read_header(path)
    for bad in ("O", "(100000,100000)f8", "V8", "float64"):
        header["arrays"]["w"]["dtype"] = bad
        rewrite(path, {"__cyrnn__.npy": header_npy(header)})
        with pytest.raises(ValueError, match="not allowed"):
            load_archive(path)


def _tampered(tmp_path, change):
    """Save a small LSTMRegressor, let ``change(meta, arrays)`` edit it and write it
    back with a valid checksum (whoever writes the file can recompute it)."""
    X, y = data(LSTMRegressor)
    est = LSTMRegressor(hidden_size=4, max_iter=2, random_state=0).fit(X, y)
    path = tmp_path / "m.cyrnn"
    est.save(path)
    kind, meta, arrays = load_archive(path)
    change(meta, arrays)
    save_archive(path, kind, meta, arrays)
    return path


def test_crafted_architecture_is_refused_before_building(tmp_path, monkeypatch):
    from cyrnn.estimators.base import BaseSequenceModel

    def huge(meta, arrays):
        meta["spec"]["hidden_size"] = meta["params"]["hidden_size"] = 10**9
        meta["spec"]["num_layers"] = meta["params"]["num_layers"] = 10**12
    path = _tampered(tmp_path, huge)
    monkeypatch.setattr(BaseSequenceModel, "_build_model",
                        lambda *a: pytest.fail("built a model from an unchecked spec"))
    with pytest.raises(ValueError, match="parameter vector has 2?\\d+ values"):
        load(path)


@pytest.mark.parametrize("change,message", [
    (lambda m: m["spec"]["cell_options"].update(batch_first=False), "not a LSTMRegressor"),
    (lambda m: m["spec"].update(cell="gru"), "not a LSTMRegressor"),
    (lambda m: m["spec"].update(dtype="object"), "inconsistent"),
    (lambda m: m["spec"].update(hidden_size=0), "hidden_size"),
    (lambda m: m["spec"]["input"].update(step_features=-1), "inconsistent"),
    (lambda m: m["spec"].pop("target"), "expected keys"),
    (lambda m: m["spec"]["target"].update(y_ndim=3), "n_outputs_"),
])
def test_crafted_spec_is_refused(tmp_path, change, message):
    path = _tampered(tmp_path, lambda meta, arrays: change(meta))
    with pytest.raises(ValueError, match=message):
        load(path)


def test_crafted_array_dtypes_are_refused(tmp_path):
    def complex_params(meta, arrays):
        arrays["params"] = arrays["params"].astype(np.complex64)
    with pytest.raises(ValueError, match="parameter vector is complex64"):
        load(_tampered(tmp_path, complex_params))

    def string_state(meta, arrays):
        name = f"optimizer/{meta['optimizer']['arrays'][0]}"
        arrays[name] = arrays[name].astype(str)
    with pytest.raises(ValueError, match="optimizer state"):
        load(_tampered(tmp_path, string_state))


def test_crafted_classes_are_refused(tmp_path):
    X, y = data(GRUClassifier)
    est = GRUClassifier(hidden_size=4, max_iter=2, random_state=0).fit(X, y)
    path = tmp_path / "c.cyrnn"
    est.save(path)
    kind, meta, arrays = load_archive(path)
    arrays["task/classes"] = arrays["task/classes"][::-1].copy()  # unsorted: wrong labels
    save_archive(path, kind, meta, arrays)
    with pytest.raises(ValueError, match="classes_ in the archive"):
        load(path)


def test_n_params_matches_the_built_models():
    from cyrnn.estimators import GRURegressor, SimpleRNNClassifier
    from cyrnn.estimators.base import _n_params
    X = np.random.default_rng(0).normal(size=(12, 4, 3))
    tokens = np.random.default_rng(0).integers(1, 9, size=(12, 4))
    for est, Xf in [(LSTMRegressor(num_layers=3, bidirectional=True), X),
                    (GRURegressor(hidden_size=5, reset_after=False), X),
                    (SimpleRNNClassifier(num_layers=2, vocab_size=9, embedding_dim=3), tokens),
                    (GRUClassifier(bidirectional=True, vocab_size=9), tokens)]:
        y = X[:, 0, 0] > 0 if hasattr(est, "class_weight") else X[:, :2, 0]
        est.set_params(max_iter=1, random_state=0).fit(Xf, y)
        assert _n_params(est._spec) == est.model_.params.size


def test_numpy_scalar_params_are_saved(tmp_path):
    X, y = data(LSTMRegressor)
    est = LSTMRegressor(hidden_size=np.int64(4), bidirectional=np.True_, max_iter=2,
                        learning_rate=np.float32(1e-2), random_state=0).fit(X, y)
    est.save(tmp_path / "m.cyrnn")
    loaded = load(tmp_path / "m.cyrnn")
    assert loaded.bidirectional is True and loaded.hidden_size == 4
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


def test_saved_files_get_plain_permissions_and_special_targets_are_refused(tmp_path):
    # files came out 0600 (the temporary file's mode), and a FIFO or device named as the
    # target was replaced by a regular file
    import os
    import stat

    arrays = {"a": np.arange(3)}
    old = os.umask(0o022)
    try:
        save_archive(tmp_path / "new.cyrnn", "k", {}, arrays)
        assert stat.S_IMODE(os.stat(tmp_path / "new.cyrnn").st_mode) == 0o644
        (tmp_path / "old.cyrnn").write_bytes(b"")
        os.chmod(tmp_path / "old.cyrnn", 0o664)
        save_archive(tmp_path / "old.cyrnn", "k", {}, arrays)
        assert stat.S_IMODE(os.stat(tmp_path / "old.cyrnn").st_mode) == 0o664
    finally:
        os.umask(old)
    link = tmp_path / "link.cyrnn"
    link.symlink_to(tmp_path / "old.cyrnn")
    save_archive(link, "k", {"via": "link"}, arrays)
    assert link.is_symlink() and load_archive(tmp_path / "old.cyrnn")[1] == {"via": "link"}
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        save_archive(tmp_path / "fifo", "k", {}, arrays)
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".cyrnn-")]
