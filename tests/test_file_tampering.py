"""Hostile model files are refused quickly, with bounded memory, and never run code.

The SHA-256 in a cyrnn file detects corruption, not tampering: whoever writes a file
can recompute it (``tampering.resave``). So besides damaged files (byte flips,
truncation), the suite loads crafted files with a correct checksum: overlapping and
compressed zip bombs, huge declared shapes, architectures far larger than the stored
vector, non-finite or non-float parameters, absurd options, special files. Every load
must end in ``ValueError`` (``IsADirectoryError`` for a folder) within ``SECONDS`` and
below ``PEAK_BYTES`` of Python-tracked memory (NumPy reports its allocations to
tracemalloc).
"""

import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import tampering

import cyrnn
from cyrnn import persistence, scoring
from cyrnn.estimators import GRUClassifier, LSTMRegressor
from cyrnn.language_model import KIND as LM_KIND
from cyrnn.language_model import CharLanguageModel

SECONDS = 2.0              # per load, on a shared 2-core machine
PEAK_BYTES = 32 << 20      # per load; every crafted file here is under 2 MiB


@pytest.fixture(scope="module")
def lm_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.cyrnn"
    CharLanguageModel(hidden_size=8, embedding_dim=4, max_epochs=1,
                      random_state=0).fit(["abc", "abd", "bcd"]).save(path)
    return path


@pytest.fixture(scope="module")
def est_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("est") / "est.cyrnn"
    X = np.random.default_rng(0).normal(size=(12, 4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LSTMRegressor(hidden_size=4, max_iter=2, random_state=0).fit(X, X[:, -1, 0]).save(path)
    return path


def refused(source, match=None, exc=ValueError):
    """Load ``source`` (a path or bytes), expecting ``exc``, within the time and memory
    budget; returns the message."""
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(exc, match=match) as info:
            cyrnn.load(source)
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < SECONDS, f"refused only after {elapsed:.2f} s"
    assert peak < PEAK_BYTES, f"peak memory {peak / 2**20:.1f} MiB while refusing"
    return str(info.value)


def crafted_lm(path, lm_file, meta_changes=(), params=None):
    """``lm_file`` re-saved with changed metadata / parameter vector (valid SHA-256)."""
    kind, meta, arrays = persistence.load_archive(lm_file)
    for keys, value in dict(meta_changes).items():
        target = meta
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    if params is not None:
        arrays = {"params": params}
    return tampering.resave(path, kind, meta, arrays)


# --------------------------------------------------------------- issue 15, item 1
def test_overlapping_entry_bomb_is_refused_before_reading(tmp_path):
    raw = tampering.overlapping_bomb(n_entries=300, payload_bytes=200_000)
    assert len(raw) < 300_000  # reading every entry would read ~40 MB
    assert "overlaps" in refused(raw)


def test_compressed_bomb_is_refused_without_inflating():
    raw = tampering.deflate_bomb(64 << 20)   # 64 MiB of zeros in ~70 KB
    assert len(raw) < 1 << 20
    assert "compressed" in refused(raw)


def test_manifest_larger_than_its_entry_is_refused_before_reading(tmp_path, lm_file):
    kind, meta, arrays = persistence.load_archive(lm_file)
    path = tmp_path / "lie.cyrnn"
    persistence.save_archive(path, kind, meta, arrays)
    with zipfile.ZipFile(path) as zf:
        entries = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    header = json.loads(np.load(path)["__cyrnn__"].tobytes())
    header["arrays"]["params"]["shape"] = [10**12]
    entries["__cyrnn__.npy"] = tampering.npy_bytes(
        np.frombuffer(json.dumps(header).encode(), np.uint8))
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    assert "describes" in refused(path)


# --------------------------------------------------------------- issue 15, item 2
@pytest.mark.parametrize("hidden", [3000, 20000])
def test_lm_loader_checks_the_architecture_before_building_it(tmp_path, lm_file, hidden):
    path = crafted_lm(tmp_path / "big.cyrnn", lm_file,  # the network is built as fitted
                      {("architecture", "hidden_size"): hidden,
                       ("architecture", "embedding_dim"): hidden})
    assert os.path.getsize(path) < 10_000
    assert "architecture needs" in refused(path)


@pytest.mark.parametrize("bad,match", [
    (lambda p: np.full_like(p, np.nan), "NaN"),
    (lambda p: p.astype(bool), "dtype bool"),
    (lambda p: p.astype("U8"), "dtype <U8"),
    (lambda p: p.astype(np.complex64), "dtype complex64"),
    (lambda p: p.astype(np.float64), "dtype float64"),
    (lambda p: p[:-1], "architecture needs"),
])
def test_lm_loader_refuses_bad_parameter_vectors(tmp_path, lm_file, bad, match):
    params = persistence.load_archive(lm_file)[2]["params"]
    path = crafted_lm(tmp_path / "bad.cyrnn", lm_file, params=bad(params))
    refused(path, match)


@pytest.mark.parametrize("key,value,match", [
    (("max_length",), 10**12, "max_length"),
    (("max_length",), -1, "max_length"), (("max_length",), 0, "max_length"),
    (("loss_curve",), [float("nan")], "loss_curve"),
    (("train_time",), float("inf"), "train_time"),
    (("train_time",), 10**400, "train_time"), (("loss_curve",), [0.5, -10**400], "loss_curve"),
    (("params", "dropout"), 2.0, "dropout"),
    (("params", "learning_rate"), -1.0, "learning_rate"),
    (("params", "cell"), "transformer", "cell"),
    (("params", "random_state"), -5, "random_state"),
    (("mode",), "poems", "mode"),
    (("chars",), "ba", "vocabulary"),
])
def test_lm_loader_refuses_bad_options(tmp_path, lm_file, key, value, match):
    path = crafted_lm(tmp_path / "bad.cyrnn", lm_file, {key: value})
    refused(path, match)
    if key[0] != "params" or key[1] == "cell":  # (what the scorer reads: the network)
        with pytest.raises(ValueError, match=match):
            scoring.load(path)


@pytest.mark.parametrize("path,value", [
    (("fitted", "n_iter_"), float("inf")), (("fitted", "n_features_in_"), float("inf")),
    (("optimizer", "step"), float("inf")), (("fitted", "rng_state", "state", "state"), 2**200),
    (("fitted", "rng_state", "state", "state"), -5),
    (("fitted", "best_loss_"), -1e300), (("fitted", "loss_curve_"), "111"),
    (("fitted", "loss_curve_"), [0.5, float("nan")]), (("fitted", "n_iter_"), 10**6),
    (("fitted", "validation_scores_"), [float("inf")])])
def test_estimator_loader_refuses_numbers_out_of_range(tmp_path, est_file, path, value):
    # (an OverflowError escaped from int() and the generator's state setter)
    kind, meta, arrays = persistence.load_archive(est_file)
    entry = meta
    for key in path[:-1]:
        entry = entry[key]
    entry[path[-1]] = value
    refused(tampering.resave(tmp_path / "e.cyrnn", kind, meta, arrays))


@pytest.mark.parametrize("state", [
    {"bit_generator": "MT19937", "state": {"key": [0] * 624, "pos": 2**31 - 1}},
    {"bit_generator": "MT19937", "state": {"key": [0] * 624, "pos": -10**8}},
    {"bit_generator": "MT19937", "state": {"key": [0] * 624, "pos": 625}}])
def test_estimator_loader_refuses_a_generator_position_outside_its_buffer(tmp_path, est_file,
                                                                         state):
    # NumPy takes any position and the first draw read out of bounds: a crash in load
    kind, meta, arrays = persistence.load_archive(est_file)
    meta["fitted"]["rng_state"] = state
    assert "buffer position" in refused(tampering.resave(tmp_path / "e.cyrnn", kind, meta,
                                                         arrays))


def test_estimator_loader_refuses_optimizer_state_no_fit_could_leave(tmp_path, est_file):
    kind, meta, arrays = persistence.load_archive(est_file)
    names = [k for k in arrays if k.startswith("optimizer/")]
    second = [k for k in names if k.split("/", 1)[1] in ("square_avg", "exp_avg_sq")]
    assert names and second
    for name, value, match in [(names[0], np.nan, "NaN"), (second[0], -1.0, "negative")]:
        bad = dict(arrays)
        bad[name] = np.full_like(arrays[name], value)
        assert match in refused(tampering.resave(tmp_path / "e.cyrnn", kind, meta, bad))


def test_estimator_loader_keeps_params_changed_after_fit(tmp_path, est_file):
    # set_params after fit changes the parameters, not the fitted model (scikit-learn,
    # pickle): such a file loads, and a later partial_fit refuses the changed
    # architecture as the pickled estimator's does
    kind, meta, arrays = persistence.load_archive(est_file)
    meta["params"]["hidden_size"] = 5  # the spec and the weights say 4
    path = tampering.resave(tmp_path / "e.cyrnn", kind, meta, arrays)
    est = cyrnn.load(path)
    assert est.hidden_size == 5 and est.model_.layers[0].hidden_size == 4
    X = np.random.default_rng(0).normal(size=(12, 4, 2))
    with pytest.raises(ValueError, match=r"partial_fit needs the fitted architecture.*hidden_size"):
        est.partial_fit(X, X[:, -1, 0])


def test_estimator_loader_refuses_a_spec_fit_cannot_build(tmp_path, est_file):
    kind, meta, arrays = persistence.load_archive(est_file)
    meta["spec"]["input"]["extra"] = 1
    path = tampering.resave(tmp_path / "e.cyrnn", kind, meta, arrays)
    assert "input" in refused(path, "inconsistent")
    with pytest.raises(ValueError, match="inconsistent"):
        cyrnn.scoring.load(path)


def test_estimator_loaders_check_n_features_in_and_the_column_names(tmp_path, est_file):
    kind, meta, arrays = persistence.load_archive(est_file)
    n = meta["spec"]["input"]["n_features_in"]
    for fitted in ({"n_features_in_": n + 1}, {"feature_names_in_": ["a"] * (n + 1)},
                   {"feature_names_in_": [1] * n}, {"feature_names_in_": "ab"}):
        path = tampering.resave(tmp_path / "e.cyrnn", kind,
                                dict(meta, fitted=dict(meta["fitted"], **fitted)), arrays)
        refused(path)
        if "feature_names_in_" in fitted:  # the scorer does not read n_features_in_
            with pytest.raises(ValueError, match="feature_names_in_"):
                cyrnn.scoring.load(path)


# --------------------------------------------------------------- issue 15, item 3
def test_devices_and_links_to_them_are_refused(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    refused("/dev/zero", "not a regular file")
    link = tmp_path / "model.cyrnn"
    link.symlink_to("/dev/zero")
    refused(link, "not a regular file")
    with open("/dev/zero", "rb") as fh:
        refused(fh, "not a regular file")


def test_directory_is_refused(tmp_path):
    refused(tmp_path, exc=IsADirectoryError)
    refused("", exc=FileNotFoundError)  # as open(''); '' named the current directory
    with pytest.raises(FileNotFoundError):
        cyrnn.scoring.load("")


FIFO_SCRIPT = """
import sys, cyrnn
try:
    cyrnn.load(sys.argv[1])
except ValueError as exc:
    print("refused:", exc)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_model_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.cyrnn"
    os.mkfifo(fifo)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", FIFO_SCRIPT, str(fifo)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert "refused:" in out.stdout and "not a regular file" in out.stdout, out


# --------------------------------------------------------------- damaged files
def _same_model(obj, reference_file):
    ref = cyrnn.load(reference_file)
    return np.array_equal(obj.model_.params.data, ref.model_.params.data)


@pytest.mark.parametrize("which", ["lm", "est"])
def test_byte_flips_are_refused_or_harmless(which, lm_file, est_file):
    path = lm_file if which == "lm" else est_file
    raw = path.read_bytes()
    rng = np.random.default_rng(15)
    positions = np.unique(rng.integers(0, len(raw), 150))
    harmless = 0
    for pos in positions:
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << int(rng.integers(8))
        start = time.perf_counter()
        try:
            obj = cyrnn.load(io.BytesIO(bytes(flipped)))
        except ValueError:
            pass
        else:  # a flip in zip bookkeeping that does not reach the content
            assert _same_model(obj, path), f"flip at {pos} changed the model silently"
            harmless += 1
        assert time.perf_counter() - start < SECONDS
    assert harmless < len(positions) // 2


@pytest.mark.parametrize("which", ["lm", "est"])
def test_truncated_files_are_refused(which, lm_file, est_file):
    raw = (lm_file if which == "lm" else est_file).read_bytes()
    for cut in np.unique(np.linspace(0, len(raw) - 1, 60).astype(int)):
        refused(raw[:cut])


def test_huge_and_hostile_manifests_are_refused():
    arrays = {"params": (np.float32, (10**15,))}
    refused(tampering.zip_of([], []), "not a cyrnn archive")
    raw = tampering.header_entry(LM_KIND, {}, arrays)
    crc = zlib.crc32(raw)
    head = tampering._local_header(b"__cyrnn__.npy", crc, len(raw)) + raw
    refused(tampering.zip_of([head], [(b"__cyrnn__.npy", crc, len(raw), 0)]),
            "do not match the manifest")


@pytest.mark.parametrize("depth", [40, 900])
def test_deeply_nested_headers_are_refused(tmp_path, depth):
    # json.loads took nesting that the digest's json.dumps then hit the recursion
    # limit on (a RecursionError escaped both loaders)
    header = {"format_version": 1, "cyrnn_version": "0.1.0", "kind": LM_KIND,
              "metadata": {"deep": "X"}, "arrays": {}, "sha256": "0" * 64}
    text = json.dumps(header).replace('"X"', "[" * depth + "]" * depth)
    entry = tampering.npy_bytes(np.frombuffer(text.encode(), np.uint8))
    crc = zlib.crc32(entry)
    head = tampering._local_header(b"__cyrnn__.npy", crc, len(entry)) + entry
    data = tampering.zip_of([head], [(b"__cyrnn__.npy", crc, len(entry), 0)])
    path = tmp_path / "deep.cyrnn"
    path.write_bytes(data)
    for load in (cyrnn.load, cyrnn.scoring.load):
        with pytest.raises(ValueError, match="nests containers deeper"):
            load(path)


def test_crafted_kinds_and_dtypes_never_run_code(tmp_path):
    before = set(sys.modules)
    for kind in ("os.system", "builtins.eval", "evil_module_that_does_not_exist.Thing"):
        path = tampering.resave(tmp_path / "k.cyrnn", kind, {}, {"params": np.zeros(3)})
        refused(path, "unknown archive kind")
    assert not {m for m in set(sys.modules) - before if "evil" in m}
    # an object (pickle) entry: the manifest may not list it, and numpy is never asked
    # to unpickle it
    blob = tampering.npy_header("|O", (1,)) + b"\x80\x04\x95"
    header = tampering.header_entry(LM_KIND, {}, {})
    head = json.loads(np.load(io.BytesIO(header)).tobytes())
    head["arrays"] = {"p": {"dtype": "|O", "shape": [1]}}
    header = tampering.npy_bytes(np.frombuffer(json.dumps(head).encode(), np.uint8))
    parts, directory, offset = [], [], 0
    for name, data in ((b"__cyrnn__.npy", header), (b"p.npy", blob)):
        crc = zlib.crc32(data)
        parts.append(tampering._local_header(name, crc, len(data)) + data)
        directory.append((name, crc, len(data), offset))
        offset += len(parts[-1])
    refused(tampering.zip_of(parts, directory), "not allowed")


def test_a_sound_file_still_loads_within_budget(lm_file, est_file):
    for path in (lm_file, est_file):
        tracemalloc.start()
        start = time.perf_counter()
        obj = cyrnn.load(path)
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert obj is not None and elapsed < SECONDS and peak < PEAK_BYTES


def test_loaded_estimators_of_other_kinds_still_check_their_spec(tmp_path):
    X = np.random.default_rng(0).integers(1, 9, size=(10, 5))
    y = np.arange(10) % 2
    path = tmp_path / "c.cyrnn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GRUClassifier(vocab_size=9, hidden_size=3, max_iter=1, random_state=0).fit(X, y).save(path)
    kind, meta, arrays = persistence.load_archive(path)
    spec = meta["spec"]
    spec["embedding_dim"] = 4  # the stored embedding is hidden_size (3) wide
    refused(tampering.resave(tmp_path / "d.cyrnn", kind, meta, arrays), "parameter vector")
    spec["embedding_dim"] = 3
    meta["params"]["embedding_dim"] = 4  # as set_params(embedding_dim=4) after fit
    est = cyrnn.load(tampering.resave(tmp_path / "e.cyrnn", kind, meta, arrays))
    assert est.embedding_dim == 4 and est.model_.layers[0].embedding_dim == 3


@pytest.mark.parametrize("params", [{"peephole": 1}, {"peephole": "yes"},
                                    {"peephole": True, "cell": "gru"}])
def test_language_model_loaders_refuse_a_bad_peephole_option(tmp_path, lm_file, params):
    # the scorer read peephole=1 as no peepholes, where cyrnn.load refused it
    path = crafted_lm(tmp_path / "bad.cyrnn", lm_file,
                      {("params", k): v for k, v in params.items()})
    refused(path, "peephole")
    with pytest.raises(ValueError, match="peephole"):
        cyrnn.scoring.load(path)


def test_a_large_file_that_is_not_a_zip_is_refused_from_its_first_bytes(tmp_path):
    # a 1.5 GB non-model file was read whole (1.5 GB resident) before the zip check
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:  # sparse: no disk used
        fh.truncate(3 << 30)
    tracemalloc.start()
    try:
        for source in (path, open(path, "rb")):
            with pytest.raises(ValueError, match="not a cyrnn archive"):
                cyrnn.load(source)
            if hasattr(source, "close"):
                source.close()
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()


def test_a_stream_that_trickles_still_loads_and_deep_metadata_is_not_written(tmp_path,
                                                                           est_file):
    class Trickle(io.RawIOBase):  # read(n) may return fewer bytes than asked
        def __init__(self, data):
            self._data, self._pos = data, 0

        def readable(self):
            return True

        def readinto(self, buf):
            n = min(2, len(buf), len(self._data) - self._pos)
            buf[:n] = self._data[self._pos:self._pos + n]
            self._pos += n
            return n

    est = cyrnn.load(Trickle(est_file.read_bytes()))
    assert est.n_features_in_ == cyrnn.load(est_file).n_features_in_
    with pytest.raises(ValueError, match="not a cyrnn archive"):
        cyrnn.load(Trickle(b"P" + b"x" * 100))
    deep = []
    for _ in range(persistence.MAX_NESTING):
        deep = [deep]
    with pytest.raises(ValueError, match="nests containers deeper"):
        persistence.save_archive(tmp_path / "deep.cyrnn", "k", {"d": deep}, {})
