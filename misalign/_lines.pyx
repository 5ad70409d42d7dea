# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""What copying the kept lines of a JSON Lines file byte for byte needs, with the GIL released:
where the lines end (memchr; numpy's `flatnonzero(data == 10)` takes ~15x longer: it writes and
scans a byte per byte of file), and the kept lines gathered into one buffer (a join of one slice
per line in Python cost more than the rest of the write)."""
import numpy as np

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, int64_t
from libc.string cimport memchr, memcpy


def newline_offsets(const uint8_t[::1] data):
    """Offsets of every b"\\n" in data, ascending, as int64."""
    cdef Py_ssize_t n = data.shape[0], count = 0, k
    if n == 0:
        return np.empty(0, dtype=np.int64)
    cdef const uint8_t *start = &data[0]
    cdef const uint8_t *end = start + n
    cdef const uint8_t *at = start
    with nogil:                # count, then fill: two passes of memchr beat a growing buffer
        while at < end:
            at = <const uint8_t *> memchr(at, 10, end - at)
            if at == NULL:
                break
            count += 1
            at += 1
    offsets = np.empty(count, dtype=np.int64)
    cdef int64_t[::1] out = offsets
    at = start
    with nogil:
        for k in range(count):
            at = <const uint8_t *> memchr(at, 10, end - at)
            out[k] = at - start
            at += 1
    return offsets


def take_ranges(const uint8_t[::1] data, const int64_t[::1] starts, const int64_t[::1] ends):
    """data[starts[0]:ends[0]] + data[starts[1]:ends[1]] + ..., as one bytes object."""
    cdef Py_ssize_t k, total = 0, n = starts.shape[0]
    if ends.shape[0] != n:
        raise ValueError("starts and ends must have the same length")
    for k in range(n):
        if not 0 <= starts[k] <= ends[k] <= data.shape[0]:
            raise ValueError(f"range {k} ({starts[k]}, {ends[k]}) is outside 0..{data.shape[0]}")
        total += ends[k] - starts[k]
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef char *at = PyBytes_AS_STRING(out)
    with nogil:
        for k in range(n):
            memcpy(at, &data[0] + starts[k], ends[k] - starts[k])
            at += ends[k] - starts[k]
    return out
