"""Saving and loading cyrnn objects without pickle.

:func:`save_archive` writes named arrays plus JSON metadata into one file;
:func:`load_archive` reads it back, checking everything before returning.
:func:`load` reads a file and hands it to the loader registered for its
``kind`` (:func:`register_loader`), so every saveable cyrnn object (the
scikit-learn estimators, ``CharLanguageModel``, ``Sequential``) shares one format;
:func:`cyrnn.scoring.load` reads the same files for scoring, without the objects'
modules. Loading never executes code: there is no pickle anywhere, the loaders come
from a fixed registry filled by cyrnn's own modules, and nothing named in a
file is imported.

File format (``format_version`` 1)
----------------------------------
The file is an uncompressed NumPy ``.npz`` archive (a zip of ``.npy``
entries), readable with ``numpy.load(path, allow_pickle=False)``:

``__cyrnn__.npy``
    A 1-D ``uint8`` array holding the UTF-8 encoded JSON *header*::

        {"format_version": 1,
         "cyrnn_version": "0.1.0",
         "kind": "cyrnn.LSTMRegressor",
         "metadata": {...},                      # the caller's JSON metadata
         "arrays": {"params": {"dtype": "<f4", "shape": [1234]}, ...},
         "sha256": "<64 hex digits>"}

``<name>.npy``
    One entry per array listed in ``"arrays"``, exactly those, stored
    uncompressed. Names are ``/``-separated segments of ``A-Z a-z 0-9 _ . -``,
    each starting with a letter, digit or ``_`` (so no ``..`` and no absolute
    paths). Only plain dtypes are allowed: booleans, integers, floats, complex
    numbers and fixed-width strings; never objects.

``sha256`` is the SHA-256 of the canonical header JSON *without* the
``sha256`` field (``json.dumps(header, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``, UTF-8), followed, for every array in sorted name order,
by ``name``, ``NUL``, ``dtype.str``, ``NUL``, the shape as JSON, ``NUL`` and
the array's C-order bytes. It detects truncation and accidental or naive
tampering (it is a checksum, not a signature: whoever can write the file can
recompute it). Non-finite floats in metadata are written as Python's ``json``
writes them (``NaN``, ``Infinity``).

Reading checks the zip signature first (a file without it is refused from its
first bytes, not read whole), the zip structure (uncompressed entries that lie
one after another without overlapping, so that at most the file's size is read
in all: no zip bombs), the header (JSON nested at most :data:`MAX_NESTING` deep,
which writing checks too), the version, that the entries match the
manifest exactly (names, dtypes, shapes, checked in every ``.npy`` header
before its data is read, so nothing larger than the file is allocated) and
the digest; any failure raises ``ValueError`` (a missing file still raises
``FileNotFoundError`` and a directory ``IsADirectoryError``, as ``open`` does).
A file from a newer ``format_version`` is refused
with a message saying so. Only regular files are read (after resolving
links): a device, FIFO or socket is refused before it is opened for reading,
and reading stops at the size the file had when it was opened.

The SHA-256 detects corruption, not tampering: anyone who can write the file
can recompute it. Loaders therefore treat every field as hostile: they check
sizes against the declared architecture (and the stored arrays) before
allocating anything, dtypes, finiteness and option ranges.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import struct
import tempfile
import zipfile

import numpy as np

__all__ = ["FORMAT_VERSION", "save_archive", "load_archive", "register_loader", "load"]

FORMAT_VERSION = 1
HEADER = "__cyrnn__"
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_NAME = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")  # no "..", no leading "/"
_DTYPE = re.compile(r"[<>|][biufcUS][0-9]+")
_ALLOWED_KINDS = "biufcUS"  # bool, ints, floats, complex, fixed-width str/bytes
_ZIP_MAGIC = b"PK\x03\x04"
# The most bytes read from a file object that is not a regular file (a stream
# whose size is unknown); regular files are read up to their size.
MAX_STREAM_BYTES = 1 << 30

_LOADERS = {}
# cyrnn modules that register loaders when imported; load() imports them (and
# nothing else: never a name read from a file) when a file's kind is not
# registered yet.
_PROVIDERS = ("cyrnn.model_io", "cyrnn.estimators", "cyrnn.language_model")


#: Containers nested deeper than this in a header are refused (cyrnn writes about 6):
#: the digest and the loaders walk the metadata recursively.
MAX_NESTING = 32


def _check_nesting(obj):
    """Refuse JSON nested deeper than :data:`MAX_NESTING`: walked without recursion, with
    one iterator per open container (memory bounded by the depth, not the size)."""
    stack = [iter((obj,))]
    while stack:
        for value in stack[-1]:
            if isinstance(value, dict | list):
                if len(stack) > MAX_NESTING:
                    raise ValueError(f"the header nests containers deeper than {MAX_NESTING}")
                stack.append(iter(value.values() if isinstance(value, dict) else value))
                break
        else:
            stack.pop()


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _digest(header, arrays):
    h = hashlib.sha256()
    h.update(_canonical({k: v for k, v in header.items() if k != "sha256"}).encode("utf-8"))
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(name.encode("utf-8") + b"\0" + arr.dtype.str.encode("ascii") + b"\0"
                 + json.dumps(list(arr.shape)).encode("ascii") + b"\0")
        h.update(arr.tobytes())
    return h.hexdigest()


def _check_name(name):
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith(HEADER):
        raise ValueError(f"array name {name!r} is not allowed: use letters, digits and _ . - / "
                         f"(and not the reserved prefix {HEADER!r})")
    return name


def save_archive(path, kind, metadata, arrays):
    """Write ``arrays`` and JSON ``metadata`` into one file (no pickle).

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        Destination. A path is written atomically (a temporary file in the same
        folder, then renamed), and used exactly as given (no suffix is added).
    kind : str
        What the file holds, e.g. ``"cyrnn.LSTMClassifier"``; :func:`load`
        dispatches on it.
    metadata : dict
        JSON-serialisable, with string keys.
    arrays : dict of str to array-like
        Arrays of plain dtypes (no objects).

    Returns
    -------
    path
        The ``path`` argument.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict, got {type(arrays).__name__}")
    clean = {}
    for name, value in arrays.items():
        arr = np.ascontiguousarray(value)
        if arr.dtype.kind not in _ALLOWED_KINDS:
            raise ValueError(f"array {name!r} has dtype {arr.dtype}, which cannot be stored "
                             "without pickle")
        clean[_check_name(name)] = arr
    header = {
        "format_version": FORMAT_VERSION,
        "cyrnn_version": _cyrnn_version(),
        "kind": kind,
        "metadata": metadata,
        "arrays": {name: {"dtype": arr.dtype.str, "shape": list(arr.shape)}
                   for name, arr in clean.items()},
    }
    try:
        _canonical(header)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata is not JSON-serialisable: {exc}") from exc
    _check_nesting(header)  # what load_archive refuses is not written
    header["sha256"] = _digest(header, clean)
    blob = np.frombuffer(_canonical(header).encode("utf-8"), dtype=np.uint8)
    entries = {HEADER: blob, **clean}
    if hasattr(path, "write"):
        np.savez(path, **entries)
        return path
    target = os.fspath(path)
    # A link is followed (its target file is replaced, the link kept); an existing
    # target that is not a regular file (a FIFO, a device) is refused, since the file
    # is written atomically (a temporary file renamed over it), which would replace it.
    real = os.path.realpath(target)
    try:
        st = os.stat(real)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"cannot save to {target!r}: it exists and is not a regular file "
                         "(model files are written to a temporary file, then renamed)")
    # the permissions a plain open() would give: the existing file's, else umask's
    mode = stat.S_IMODE(st.st_mode) if st is not None and stat.S_ISREG(st.st_mode) \
        else 0o666 & ~_umask()
    folder = os.path.dirname(real)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cyrnn-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _naming(exc, target) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            np.savez(fh, **entries)
        os.replace(tmp, real)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # name the target, not the temporary file
            raise _naming(exc, target) from exc
        raise
    return path


def _umask():
    """The process's umask, read without changing it where the system says it (Linux),
    else by setting and restoring it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _naming(exc, target):
    """``exc`` (an OSError) about ``target``: same errno (and subclass), the path the
    caller asked for instead of the temporary file."""
    if exc.errno is None:
        return OSError(f"cannot write {target!r}: {exc}")
    return OSError(exc.errno, exc.strerror or str(exc), target)


def _cyrnn_version():
    from . import __version__
    return __version__


def _read_bytes(path, archive=False):
    """The bytes of ``path``: a regular file (links resolved), read up to the size it
    had when opened, or a binary file object, read up to :data:`MAX_STREAM_BYTES`.

    Devices (``/dev/zero``), FIFOs and sockets are refused before they are opened for
    reading (a FIFO would block, a device never end); a directory raises
    ``IsADirectoryError`` and a missing file ``FileNotFoundError``, as ``open`` does.
    ``archive``: stop after the first bytes when they are not a zip's signature (what
    the archive loader then refuses), instead of reading a large other file whole.
    """
    if hasattr(path, "read"):
        return _read_stream(path, archive)
    name = os.fspath(path)
    if not name:  # (realpath('') is the current directory: open('') says this)
        raise FileNotFoundError(2, "No such file or directory", name)
    real = os.path.realpath(name)
    _check_regular(os.stat(real), name)
    # O_NONBLOCK: should a FIFO replace the file after the check, opening it does not
    # block (and fstat below refuses it); regular files ignore the flag.
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        size = _check_regular(os.fstat(fh.fileno()), name).st_size
        data = fh.read(4 if archive else size + 1)
        if archive:
            if data != _ZIP_MAGIC:
                return data  # not a zip: refused from its first bytes, not read whole
            data += fh.read(max(0, size + 1 - len(data)))
    if len(data) > size:
        raise ValueError(f"{name}: the file grew while it was being read")
    return data


def _check_regular(st, name):
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", name)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{name}: not a regular file (a device, FIFO or socket), which "
                         "cyrnn does not read")
    return st


def _read_stream(fh, archive=False):
    """Read a binary file object: refuse one on a device, FIFO or socket, and read at
    most ``MAX_STREAM_BYTES`` of a stream of unknown size."""
    try:
        fileno = fh.fileno()
    except (AttributeError, OSError, ValueError):  # io.BytesIO and the like
        fileno = None
    if fileno is not None:
        _check_regular(os.fstat(fileno), getattr(fh, "name", "<file object>"))
    chunks, total, head = [], 0, b""
    while True:  # in chunks: read(n) may allocate n bytes up front
        chunk = fh.read(1 << 20)
        if not isinstance(chunk, bytes | bytearray):
            raise TypeError(f"the file object must be opened in binary mode (read() returned "
                            f"{type(chunk).__name__})")
        if not chunk:
            return b"".join(chunks)
        if archive and len(head) < 4:  # (a read may return fewer bytes than asked)
            head = (head + bytes(chunk))[:4]
            if not _ZIP_MAGIC.startswith(head):
                return head  # not a zip: refused from its first bytes, not read whole
        total += len(chunk)
        if total > MAX_STREAM_BYTES:
            raise ValueError(f"the stream holds more than {MAX_STREAM_BYTES} bytes, more "
                             "than cyrnn reads from a file object; save to a regular file")
        chunks.append(chunk)


def load_archive(path):
    """Read a file written by :func:`save_archive`, verifying it first.

    Parameters
    ----------
    path : str, os.PathLike or binary file object

    Returns
    -------
    kind : str
    metadata : dict
    arrays : dict of str to ndarray

    Raises
    ------
    ValueError
        The file is not a cyrnn archive, is truncated or corrupted, fails the
        SHA-256 check, or comes from a newer format version.

    Notes
    -----
    Nothing is allocated beyond what the file holds: entries must be stored
    uncompressed (as :func:`save_archive` writes them), so no entry can expand
    (no zip bomb), and every ``.npy`` header is checked against the manifest
    and the entry's size before its data is read.
    """
    raw = _read_bytes(path, archive=True)
    where = getattr(path, "name", path)
    if not isinstance(raw, bytes | bytearray) or raw[:4] != _ZIP_MAGIC:
        raise ValueError(f"{where!s}: not a cyrnn archive (not a zip/npz file)")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            entries = _zip_entries(zf, raw)
            if HEADER not in entries:
                raise ValueError("no cyrnn header entry")
            blob = _read_npy(zf, entries[HEADER], HEADER, "|u1", None)
            header = json.loads(blob.tobytes().decode("utf-8"))
            _check_nesting(header)
            manifest = _check_header(header)
            if set(entries) - {HEADER} != set(manifest):
                raise ValueError(f"entries {sorted(set(entries) - {HEADER})} do not match the "
                                 f"manifest {sorted(manifest)}")
            for name, spec in manifest.items():  # cheap, before reading any array
                nbytes = math.prod(spec["shape"]) * np.dtype(spec["dtype"]).itemsize
                if nbytes > entries[name].file_size:
                    raise ValueError(f"array {name!r}: the manifest describes {nbytes} bytes "
                                     f"({spec['dtype']} {spec['shape']}), its entry holds "
                                     f"only {entries[name].file_size}")
            arrays = {name: _read_npy(zf, entries[name], name, spec["dtype"], spec["shape"])
                      for name, spec in manifest.items()}
    except ValueError as exc:
        raise ValueError(f"{where!s}: invalid cyrnn archive: {exc}") from exc
    except Exception as exc:  # zip, zlib, npy-format and decoding errors of damaged files
        raise ValueError(f"{where!s}: invalid cyrnn archive (truncated or corrupted): "
                         f"{type(exc).__name__}: {exc}") from exc
    if _digest(header, arrays) != header["sha256"]:
        raise ValueError(f"{where!s}: SHA-256 mismatch: the file was modified or damaged")
    return header["kind"], header["metadata"], arrays


def _zip_entries(zf, raw):
    """``{array name: ZipInfo}``; refuses compressed, oversized, duplicate and
    overlapping entries, so that reading every entry reads at most ``len(raw)`` bytes."""
    entries, spans = {}, []
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise ValueError(f"unexpected entry {name!r} (not .npy)")
        if (info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size
                or info.file_size > len(raw)):
            raise ValueError(f"entry {name!r} is compressed or larger than the file")
        name = name[:-4]
        if name in entries:
            raise ValueError(f"duplicate entry {name!r}")
        entries[name] = info
        # The entry's bytes: its local header (30 bytes, the name, an extra field) and
        # its data. Where each one starts comes from the central directory; a crafted
        # directory can point several entries into one region (each containing the
        # next), which makes reading them all cost far more than the file's size.
        start = info.header_offset
        local = raw[start:start + 30]
        if len(local) < 30 or local[:4] != _ZIP_MAGIC:
            raise ValueError(f"entry {name!r}: no local header at offset {start}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        spans.append((start, start + 30 + name_len + extra_len + info.compress_size, name))
    spans.sort()
    end = 0
    for start, stop, name in spans:
        if start < end:
            raise ValueError(f"entry {name!r} overlaps the entry before it")
        end = stop
    if end > getattr(zf, "start_dir", len(raw)):
        raise ValueError("the entries overlap the zip's central directory")
    return entries


def _read_npy(zf, info, name, dtype, shape):
    """The array of one ``.npy`` entry, after checking its header: dtype string
    ``dtype``, shape ``shape`` (None: any 1-D shape) and a data size that
    matches the entry, so the allocation is bounded by the file."""
    fmt = np.lib.format
    with zf.open(info) as fh:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            got_shape, fortran, got_dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            got_shape, fortran, got_dtype = fmt.read_array_header_2_0(fh)
        else:
            raise ValueError(f"array {name!r}: unsupported .npy version {version}")
        if got_dtype.str != dtype or (list(got_shape) != shape if shape is not None
                                      else len(got_shape) != 1):
            raise ValueError(f"array {name!r} is {got_dtype.str} {list(got_shape)}, the "
                             f"manifest says {dtype} {shape}")
        count = math.prod(got_shape)
        nbytes = count * got_dtype.itemsize
        if nbytes != info.file_size - fh.tell():
            raise ValueError(f"array {name!r}: the entry holds {info.file_size - fh.tell()} "
                             f"bytes of data, its header describes {nbytes}")
        data = fh.read(nbytes)  # the zip module checks the CRC at the end
    if len(data) != nbytes:
        raise ValueError(f"array {name!r} is truncated")
    arr = np.frombuffer(data, dtype=got_dtype, count=count)
    return arr.reshape(got_shape, order="F" if fortran else "C").copy()


def _check_header(header):
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    missing = {"format_version", "cyrnn_version", "kind", "metadata", "arrays",
               "sha256"} - set(header)
    if missing:
        raise ValueError(f"the header lacks {sorted(missing)}")
    version = header["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"format_version {version} was written by a newer cyrnn "
                         f"({header.get('cyrnn_version')!r}); this one reads up to "
                         f"{FORMAT_VERSION}")
    if not isinstance(header["kind"], str) or not isinstance(header["metadata"], dict):
        raise ValueError("kind must be a string and metadata an object")
    if not isinstance(header["sha256"], str):
        raise ValueError("sha256 must be a string")
    manifest = header["arrays"]
    if not isinstance(manifest, dict):
        raise ValueError("the array manifest is not an object")
    for name, spec in manifest.items():
        _check_name(name)
        if (not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str)
                or not isinstance(spec.get("shape"), list)):
            raise ValueError(f"bad manifest entry for {name!r}")
        if not _DTYPE.fullmatch(spec["dtype"]) or np.dtype(spec["dtype"]).str != spec["dtype"]:
            raise ValueError(f"array {name!r}: dtype {spec['dtype']!r} is not allowed")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                   for d in spec["shape"]):
            raise ValueError(f"array {name!r}: bad shape {spec['shape']!r}")
    return manifest


def register_loader(kind, fn):
    """Make :func:`load` hand files of ``kind`` to ``fn(metadata, arrays)``.

    Parameters
    ----------
    kind : str
    fn : callable
        ``fn(metadata: dict, arrays: dict) -> object``; it must validate what it
        reads and raise ``ValueError`` for inconsistent content.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if not callable(fn):
        raise TypeError("fn must be callable")
    _LOADERS[kind] = fn
    return fn


def load(path):
    """Load a cyrnn object saved with its ``save`` method.

    Parameters
    ----------
    path : str, os.PathLike or binary file object

    Returns
    -------
    object
        E.g. a fitted :class:`cyrnn.LSTMClassifier`.

    Raises
    ------
    ValueError
        Invalid, tampered or truncated file, or an unknown ``kind``.

    Examples
    --------
    >>> import numpy as np, cyrnn, tempfile, os
    >>> X = np.random.default_rng(0).normal(size=(20, 5, 2))
    >>> est = cyrnn.GRURegressor(hidden_size=4, max_iter=2, random_state=0)
    >>> est = est.fit(X, X[:, -1, 0])
    >>> path = os.path.join(tempfile.mkdtemp(), "gru.cyrnn")
    >>> _ = est.save(path)
    >>> np.allclose(cyrnn.load(path).predict(X), est.predict(X))
    True
    """
    kind, metadata, arrays = load_archive(path)
    if kind not in _LOADERS:
        import importlib
        import importlib.util
        for module in _PROVIDERS:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
    try:
        loader = _LOADERS[kind]
    except KeyError:
        raise ValueError(f"unknown archive kind {kind!r}; known kinds: {sorted(_LOADERS)}") \
            from None
    return loader(metadata, arrays)
