# Configuration and threads: OpenMP detection, the thread count of the row-chunked
# loops, and the CPU dispatch attribute of the C vector kernels.
# Included by _cython_kernels.pyx.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CYRNN_OPENMP 1
    static int cyrnn_omp_max_threads(void) { return omp_get_max_threads(); }
    /* inside a parallel region: this thread's number, the team's size, and a
       barrier of the whole team (an orphaned directive: it binds to the region
       that calls it, which every thread of the team must reach equally often) */
    static int cyrnn_omp_thread(void) { return omp_get_thread_num(); }
    static int cyrnn_omp_team(void) { return omp_get_num_threads(); }
    static void cyrnn_omp_barrier(void) {
        #pragma omp barrier
    }
    #else
    #define CYRNN_OPENMP 0
    static int cyrnn_omp_max_threads(void) { return 1; }
    static int cyrnn_omp_thread(void) { return 0; }
    static int cyrnn_omp_team(void) { return 1; }
    static void cyrnn_omp_barrier(void) { }
    #endif

    /* Array kernels compiled for AVX-512, AVX2 and baseline x86-64, picked at load
       time (gcc target_clones); other compilers get the baseline only. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define CYRNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define CYRNN_CLONES
    #endif

    /* Fork: GNU OpenMP's thread pool does not survive fork(), and a parallel region
       in the child of a parent that had started one hangs. cyrnn_omp_ran: a region
       of several threads was asked for in this process (set by _team); the
       pthread_atfork child handler, which runs for every fork() of the process,
       Python's os.fork or a C server's alike, then makes the child's loops run on
       their calling thread (cyrnn_forked). */
    #include <pthread.h>
    static volatile int cyrnn_omp_ran = 0;
    static volatile int cyrnn_forked = 0;
    static void cyrnn_atfork_child(void) { if (cyrnn_omp_ran) cyrnn_forked = 1; }
    static int cyrnn_atfork_register(void) {
        return pthread_atfork(NULL, NULL, cyrnn_atfork_child);
    }

    /* Seconds of wall time and of the calling thread's CPU time. */
    #include <time.h>
    static double cyrnn_wall(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }
    static double cyrnn_cpu(void) {
    #ifdef CLOCK_THREAD_CPUTIME_ID
        struct timespec t;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    #else
        return cyrnn_wall();  /* no per-thread clock: regions always look well served */
    #endif
    }
    """
    int CYRNN_OPENMP
    int cyrnn_omp_max_threads() nogil
    int cyrnn_omp_thread() nogil
    int cyrnn_omp_team() nogil
    void cyrnn_omp_barrier() nogil
    double cyrnn_wall() nogil
    double cyrnn_cpu() nogil
    int cyrnn_omp_ran
    int cyrnn_forked
    int cyrnn_atfork_register()


def openmp_enabled():
    """Whether this module was compiled with OpenMP (parallel row loops)."""
    return bool(CYRNN_OPENMP)


# Threads of the parallel row loops: 0 = the OpenMP default (OMP_NUM_THREADS, else
# all cores). A process-wide setting (``omp_set_num_threads`` would only affect the
# calling thread), written by ``set_num_threads`` and read at each parallel loop.
cdef int _row_threads = 0


# The contention governor. A parallel region pays only when its threads get their
# cores: on a 2-core machine with one other busy process, the medium inference
# (64 rows, 4 chunks) took 15.8 ms on 2 threads and 5.6 ms on 1 (quiet: 2.8 ms on
# 2), because a worker that the scheduler keeps off a core holds up the region's
# end. So every region of at least JUDGED_MIN seconds is judged by the CPU time its
# chunks got: below CONTENDED_SPEEDUP times the region's wall time (the team was
# slower than its calling thread alone would have been), the team did not get its
# cores. CONTENDED_REGIONS such regions in a row (fewer are often a passing spin: ONNX
# Runtime's threads spin after each of its runs in the same process, and the first
# calls after importing torch start its OpenMP team; a hold triggered by those cost
# the interleaved benchmark 2x) make every parallel region run on the calling thread
# for the next _serial_hold seconds; then the regions try the team again (a good one
# clears the count). Results do not depend on the thread count,
# so the switch changes speed only. The state is read and written without a lock by
# concurrent calls (a lost update only shifts when the next try happens).
cdef double _serial_hold = 0.25
cdef double _serial_until = 0.0
cdef int _strikes = 0
cdef double _last_wall = 0.0, _last_cpu = 0.0  # the last judged region
cdef double JUDGED_MIN = 1e-3
cdef double CONTENDED_SPEEDUP = 1.0
cdef int CONTENDED_REGIONS = 3


cdef inline Py_ssize_t _team(Py_ssize_t nt) noexcept nogil:
    """The threads a parallel region that wants ``nt`` gets now (1 while held)."""
    global cyrnn_omp_ran
    if nt > 1 and _serial_hold > 0 and cyrnn_wall() < _serial_until:
        return 1
    if nt > 1:
        cyrnn_omp_ran = 1  # a fork from now on leaves the child on one thread
    return nt


cdef inline void _judge(double t0, double cpu, Py_ssize_t nt) noexcept nogil:
    """After a region of ``nt`` threads that started at wall time ``t0`` and whose
    chunks used ``cpu`` seconds of thread CPU time: hold regions serial when the team
    did not get its cores CONTENDED_REGIONS times in a row."""
    global _serial_until, _strikes, _last_wall, _last_cpu
    cdef double wall
    if nt <= 1 or _serial_hold <= 0:
        return
    wall = cyrnn_wall() - t0
    if wall < JUDGED_MIN:
        return
    _last_wall = wall
    _last_cpu = cpu
    if cpu >= CONTENDED_SPEEDUP * wall:
        _strikes = 0
        return
    _strikes += 1
    if _strikes >= CONTENDED_REGIONS:
        _strikes = 0
        _serial_until = cyrnn_wall() + _serial_hold


def set_contention_hold(double seconds):
    """Seconds the parallel regions run on one thread after regions whose team did
    not get its cores (0: never; the default 0.25); returns the previous value and
    ends a hold in progress."""
    global _serial_hold, _serial_until, _strikes
    if not seconds >= 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    previous = _serial_hold
    _serial_hold = seconds
    _serial_until = 0.0
    _strikes = 0
    return previous


# The team mode's own hold (src/fused.pxi, ``_team_op``). Its threads meet at two
# barriers per step, so one thread kept off its core stops the other at every step:
# with one busy-loop process on the 2-core machine the large inference took 223 ms
# in team mode against 134 ms with the rows split (same process, alternating), and
# its regions, 70+ ms each, are too long for the strikes above to act in time. A
# team region whose threads spent less than TEAM_SHARE of their time working
# (CPU time outside the barriers, against the region's wall time times the team
# size) turns the team mode off for TEAM_HOLD seconds: under lasting contention one
# call in every TEAM_HOLD seconds pays for the try (the small-batch team: windows,
# below). Quiet runs measured 0.98 (the packed team), 0.89-0.91 (a 3 x 480
# LSTM's streaming step, whose thread 0 does the cell math alone) and 0.95-0.98
# (3 x 960). The threads' work is their CPU time minus the wall time they spent at
# the barriers, clamped at 0: where a barrier sleeps instead of spinning
# (OMP_WAIT_POLICY=PASSIVE, an oversubscribed team) it reads low, and the team,
# whose barriers then cost a wake-up each, tends to step aside.
cdef double TEAM_HOLD = 2.0
# The small-batch team's (``_small_team_op``) hold is shorter: under lasting
# contention its tries cost less (a 3 x 480 step took 400-520 us on the team against
# 345-400 on one thread, with a busy-loop process on the other core), and spinning
# threads of another library in the process (PyTorch's OpenMP team spins for a
# while after each of its calls) should not keep it off for long.
cdef double SMALL_TEAM_HOLD = 0.5
cdef double TEAM_SHARE = 0.75
cdef double _team_until = 0


cdef inline bint _team_allowed() noexcept nogil:
    return cyrnn_wall() >= _team_until


# The small-batch team's regions are judged together: their wall, capacity (threads x
# wall) and CPU seconds add up until the wall time reaches TEAM_JUDGED_MIN, so that a
# streaming step's short regions (an op of a 3 x 480 LSTM step: about 80 us on two
# threads) are judged at all; TEAM_STRIKES such windows in a row below TEAM_SHARE start
# the hold
# (one is often a passing blip: a 3 x 960 step that took 4.2 ms among steps of 2.0-2.7,
# share 0.59 among 0.92-0.98, on a quiet machine). Regions in the first TEAM_WARMUP
# seconds after the process's first team region are not judged: the threads' creation,
# and the scheduler moving a new thread off its parent's core at its next balancing
# tick, give a fresh process's first steps of a 3 x 480 LSTM spikes of 2.0-2.5 ms
# every 8-10 steps of 0.2 ms over its first few ms (``benchmarks/probe_team.py 3 480
# --trace 40``), which held the team off at the start of every process.
cdef double TEAM_JUDGED_MIN = 20e-3
cdef double _team_acc_wall = 0, _team_acc_cap = 0, _team_acc_cpu = 0
cdef double _team_last_share = -1  # the last judgement's CPU share (-1: none yet)
cdef double _team_since = 0  # when the process's first team region ran (wall seconds)
cdef double TEAM_WARMUP = 0.1  # seconds after it in which no region is judged
cdef int _team_strikes = 0  # windows in a row below TEAM_SHARE
cdef int TEAM_STRIKES = 2
cdef double _team_acc_end = 0  # when the last judged region ended (wall seconds)
cdef double TEAM_WINDOW_GAP = 1.0  # a window (and the strikes) older than this: dropped


cdef inline void _team_judge(double t0, double cpu, Py_ssize_t nt,
                             bint small) noexcept nogil:
    """After a team region of ``nt`` threads that started at wall time ``t0`` and
    whose threads worked ``cpu`` seconds outside the barriers. ``small``: a
    small-batch team's region (judged in windows, SMALL_TEAM_HOLD); else the packed
    team mode's, judged alone when it lasted JUDGED_MIN or more (TEAM_HOLD), as
    before the windows existed."""
    global _team_until, _team_acc_wall, _team_acc_cap, _team_acc_cpu, _team_last_share
    global _team_since, _team_strikes, _team_acc_end
    cdef double now = cyrnn_wall()
    cdef double wall = now - t0
    if _team_since == 0:
        _team_since = t0
    if TEAM_SHARE <= 0 or now - _team_since < TEAM_WARMUP:
        return
    if not small:
        if wall >= JUDGED_MIN:
            _team_last_share = cpu / (nt * wall)
            if cpu < TEAM_SHARE * nt * wall:
                _team_until = now + TEAM_HOLD
        return
    if t0 - _team_acc_end > TEAM_WINDOW_GAP:
        # calls far apart: the partial window and the strikes describe another time
        _team_acc_wall = 0
        _team_acc_cap = 0
        _team_acc_cpu = 0
        _team_strikes = 0
    _team_acc_end = now
    _team_acc_wall += wall
    _team_acc_cap += nt * wall
    _team_acc_cpu += cpu
    if _team_acc_wall >= TEAM_JUDGED_MIN:
        _team_last_share = _team_acc_cpu / _team_acc_cap
        if _team_acc_cpu >= TEAM_SHARE * _team_acc_cap:
            _team_strikes = 0
        else:
            _team_strikes += 1
            if _team_strikes >= TEAM_STRIKES:
                _team_strikes = 0
                _team_until = now + SMALL_TEAM_HOLD
        _team_acc_wall = 0
        _team_acc_cap = 0
        _team_acc_cpu = 0


def _set_team_share(double value):
    """Set TEAM_SHARE (tests: above 1 makes a packed team-mode region of JUDGED_MIN or
    more end the team mode for TEAM_HOLD seconds, and small-batch teams for
    SMALL_TEAM_HOLD after TEAM_STRIKES judging windows; 0 ends a hold in progress and
    never starts one); returns the previous value. Starts a new window."""
    global TEAM_SHARE, _team_until, _team_acc_wall, _team_acc_cap, _team_acc_cpu
    global _team_strikes
    previous = TEAM_SHARE
    TEAM_SHARE = value
    if value <= 0:
        _team_until = 0
    _team_acc_wall = 0
    _team_acc_cap = 0
    _team_acc_cpu = 0
    _team_strikes = 0
    return previous


def contention_state():
    """The contention governor's state: ``hold`` (seconds a hold lasts), ``held``
    (seconds left of the current hold, 0 when none), ``strikes`` and the last judged
    region's ``wall`` and ``cpu`` seconds; ``team_held``: seconds left in which the
    forward's team mode is off (a team region whose threads waited at its barriers);
    ``team_share``: the share of their time the team regions' threads last spent
    working, outside the barriers (-1: none judged yet)."""
    return {"hold": _serial_hold, "held": max(0.0, _serial_until - cyrnn_wall()),
            "strikes": _strikes, "wall": _last_wall, "cpu": _last_cpu,
            "team_held": max(0.0, _team_until - cyrnn_wall()),
            "team_share": _team_last_share}


def _contention_judge(double wall, double cpu, Py_ssize_t nt=2):
    """Judge a region of ``nt`` threads that took ``wall`` seconds and got ``cpu``
    seconds of CPU time in its chunks, as the regions do; returns the team a region
    wanting ``nt`` threads gets right after (tests)."""
    _judge(cyrnn_wall() - wall, cpu, nt)
    return _team(nt)


# A process forked from this one after it ran a parallel region of several threads
# runs every loop of this module on its calling thread (``cyrnn_forked``, set by a
# pthread_atfork handler, see above): a multiprocessing pool or a pre-forking server
# after a warm-up call hung there. ``set_num_threads`` in such a child changes
# nothing; processes started with spawn or forkserver are not affected.
if cyrnn_atfork_register() != 0:
    raise ImportError("pthread_atfork failed")


def _forked():
    """Whether this process was forked after its parent ran a parallel region here
    (its loops then run on the calling thread): the Numba backend, whose OpenMP pool
    is the same GNU OpenMP library, then keeps its own regions off too."""
    return bool(cyrnn_forked)


def _forked_serial():
    """Run every loop of this module on its calling thread from now on (as in a child
    forked after a parallel region): the Numba backend's fork handler calls it in a
    child forked after Numba's OpenMP pool started, whose regions here would hang."""
    global cyrnn_forked
    cyrnn_forked = 1


cdef inline int _nthreads() noexcept nogil:
    cdef int n = _row_threads
    if cyrnn_forked:
        return 1
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
