# Configuration and threads: OpenMP detection, the thread count of the row-chunked
# loops, and the CPU dispatch attribute of the C vector kernels.
# Included by _cython_kernels.pyx.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CYRNN_OPENMP 1
    static int cyrnn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define CYRNN_OPENMP 0
    static int cyrnn_omp_max_threads(void) { return 1; }
    #endif

    /* Array kernels compiled for AVX-512, AVX2 and baseline x86-64, picked at load
       time (gcc target_clones); other compilers get the baseline only. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define CYRNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define CYRNN_CLONES
    #endif
    """
    int CYRNN_OPENMP
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
