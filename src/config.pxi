# Configuration: OpenMP, row-loop threads, target clones (included by _cython_kernels.pyx).


# Row loops go parallel only when a step has at least this many hidden units in
# all (N * H) and at least two rows. With the vectorised activations the gate
# math of a step is small next to its recurrent GEMM (large: B=64, H=512, 32768
# units, ~30 us vs ~1 ms), and an OpenMP region per step that alternates with
# BLAS's threads stalled every step on the loaded 2-core machine (large config:
# 6.4 s per inference with regions from 32768 units). So only wider steps
# (twice the large config's) share out the gate math.
cdef enum:
    PARALLEL_MIN_WORK = 65536
PARALLEL_MIN = PARALLEL_MIN_WORK

# blocks OpenBLAS keeps on one thread (its own cut-off is m*n*k <= 65536 * 4,
# interface/gemm.c); from THREADED_GEMM_MNK on, one (threaded) call.
cdef extern from *:
    """
    #define CYRNN_SERIAL_GEMM_MNK 262144.0
    #define CYRNN_THREADED_GEMM_MNK 16777216.0
    """
    const double SERIAL_GEMM_MNK "CYRNN_SERIAL_GEMM_MNK"
    const double THREADED_GEMM_MNK "CYRNN_THREADED_GEMM_MNK"

cdef extern from *:
    """
    #ifdef _OPENMP
    #define CYRNN_OPENMP 1
    #else
    #define CYRNN_OPENMP 0
    #endif
    """
    int CYRNN_OPENMP


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int cyrnn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int cyrnn_omp_max_threads(void) { return 1; }
    #endif
    """
    int cyrnn_omp_max_threads() nogil


def openmp_enabled():
    """Whether this module was compiled with OpenMP (parallel row loops)."""
    return bool(CYRNN_OPENMP)


# Threads of the parallel row loops: 0 = the OpenMP default (OMP_NUM_THREADS, else
# all cores). A process-wide setting (``omp_set_num_threads`` would only affect the
# calling thread), written by ``set_num_threads`` and read at each parallel loop.
cdef int _row_threads = 0


cdef inline int _nthreads() noexcept nogil:
    cdef int n = _row_threads
    return n if n > 0 else cyrnn_omp_max_threads()


def set_num_threads(int n):
    """Use at most ``n`` threads in the parallel row loops (0: OpenMP's default).
    Called by ``cyrnn.set_num_threads``. Returns the previous setting."""
    global _row_threads
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    previous = _row_threads
    _row_threads = n
    return previous


def get_num_threads():
    """The row-loop thread count in effect (the setting, else OpenMP's default)."""
    return _nthreads()


cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define CYRNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define CYRNN_CLONES
    #endif
    """
