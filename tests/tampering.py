"""Builders of hostile model files for the tampering tests (not a test module)."""

import io
import json
import struct
import zipfile
import zlib

import numpy as np

from cyrnn import persistence


def npy_header(dtype, shape):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def header_entry(kind, metadata, arrays, sha256="0" * 64):
    """The ``__cyrnn__.npy`` bytes of a header listing ``arrays`` ({name: (dtype, shape)})."""
    header = {"format_version": 1, "cyrnn_version": "0.1.0", "kind": kind,
              "metadata": metadata,
              "arrays": {k: {"dtype": np.dtype(d).str, "shape": list(s)}
                         for k, (d, s) in arrays.items()},
              "sha256": sha256}
    blob = np.frombuffer(json.dumps(header).encode(), np.uint8)
    return npy_bytes(blob)


def _local_header(name, crc, size):
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, size, size,
                       len(name), 0) + name


def _central(name, crc, size, offset):
    return struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, size, size,
                       len(name), 0, 0, 0, 0, 0, offset) + name


def zip_of(parts, directory):
    """A zip from raw ``parts`` (bytes laid out in order) and central ``directory``
    records ``(name, crc, size, offset)``."""
    body = b"".join(parts)
    cd = b"".join(_central(n, c, s, o) for n, c, s, o in directory)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(directory), len(directory),
                      len(cd), len(body), 0)
    return body + cd + end


def overlapping_bomb(n_entries, payload_bytes):
    """A stored zip whose entries overlap: entry ``i``'s data holds a valid ``.npy``
    header and then every following entry, so reading all entries reads about
    ``n_entries / 2`` times the file. Every CRC is right; the header lists them all."""
    names = [f"a{i}".encode() + b".npy" for i in range(n_entries)]
    # Build from the last entry backwards: data_i = npy header + LH_{i+1} + data_{i+1}.
    tail = b"\0" * payload_bytes
    sizes = {}
    for i in range(n_entries - 1, -1, -1):
        data = npy_header(np.uint8, (len(tail),)) + tail
        crc = zlib.crc32(data)
        sizes[i] = (len(data) - len(npy_header(np.uint8, (len(tail),))), crc, len(data))
        tail = _local_header(names[i], crc, len(data)) + data
    arrays = {f"a{i}": (np.uint8, (sizes[i][0],)) for i in range(n_entries)}
    head = header_entry("cyrnn.CharLanguageModel", {}, arrays)
    head_name = b"__cyrnn__.npy"
    head_crc = zlib.crc32(head)
    first = _local_header(head_name, head_crc, len(head)) + head
    directory = [(head_name, head_crc, len(head), 0)]
    offset = len(first)
    for i in range(n_entries):
        directory.append((names[i], sizes[i][1], sizes[i][2], offset))
        offset += 30 + len(names[i])  # the next local header sits inside this entry's data
        offset += len(npy_header(np.uint8, (sizes[i][0],)))
    return zip_of([first, tail], directory)


def deflate_bomb(raw_bytes):
    """A cyrnn-looking file whose one array entry is deflate-compressed zeros."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__cyrnn__.npy", header_entry("k", {}, {"w": (np.uint8, (raw_bytes,))}),
                    compress_type=zipfile.ZIP_STORED)
        with zf.open("w.npy", "w", force_zip64=True) as fh:
            fh.write(npy_header(np.uint8, (raw_bytes,)))
            block = b"\0" * (1 << 20)
            for _ in range(raw_bytes >> 20):
                fh.write(block)
    return buf.getvalue()


def resave(path, kind, metadata, arrays):
    """A crafted file with a correct SHA-256 (anyone can recompute it)."""
    persistence.save_archive(path, kind, metadata, arrays)
    return path
