"""Compile every CUDA kernel of cyrnn to PTX for a real GPU (sm_90), without one.

Run by tests/test_cuda_backend.py in a subprocess where NVVM (the CUDA toolkit,
e.g. ``pip install "cyrnn[cuda]"``) is present: the simulator runs the kernels as
Python, so only this proves they type-check and compile for the device. The
machine has no GPU, so the availability probe and the device query that
numba-cuda makes for device functions are replaced by a compute capability.
"""

import sys
import types as pytypes

from numba import cuda, types

cuda.is_available = lambda: True
import numba.cuda.dispatcher as _dispatcher  # noqa: E402

_dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))

from cyrnn.backends.cuda.gemm import KERNELS as GEMM  # noqa: E402
from cyrnn.backends.cuda.loops import KERNELS  # noqa: E402
from cyrnn.backends.cuda.ops import KERNELS as OPS  # noqa: E402
from cyrnn.backends.cuda.update import KERNELS as UPDATE  # noqa: E402
from cyrnn.backends.cuda.sampling import sample_step  # noqa: E402
from cyrnn.backends.cuda.update import sumsq  # noqa: E402


def signatures(F):
    i64 = types.int64

    def A(nd, dt=F):
        return types.Array(dt, nd, "C")

    u8 = A(2, types.uint8)
    fk, bk, fsk, bsk = KERNELS[str(F)]
    gemm, colsum, peep_grad = GEMM[str(F)]
    fwd_arrays = (A(3), A(2), A(1), A(2), u8, A(3), A(3), A(3), A(3), A(3), A(2))
    # hs, cs, gates, aux, peep, mask, dh_seq, dh_T, dc_T, dxp, dgh, dg, dhn, dh, dc, bud
    bwd_arrays = (A(3), A(3), A(3), A(3), A(2), u8, A(3), A(2), A(2), A(3), A(3), A(2), A(2),
                  A(2), A(2), A(2, i64))
    return {
        "forward_kernel": (fk, (i64,) * 7 + fwd_arrays),
        "backward_kernel": (bk, (i64,) * 9 + (A(1, i64), A(1, i64)) + bwd_arrays[:4]
                            + (A(2),) + bwd_arrays[4:] + (A(2), A(2))),
        "fwd_step_kernel": (fsk, (i64,) * 8 + fwd_arrays[:1] + fwd_arrays[3:]),
        "bwd_step_kernel": (bsk, (i64,) * 10 + bwd_arrays + (A(2), A(2), A(2))),
        "gemm": (gemm, (i64,) * 3 + (A(1), i64, i64, i64) * 2 + (A(1), i64, i64, F, A(1), i64,
                                                                i64)),
        "colsum": (colsum, (A(2), A(1))),
        "peep_grad": (peep_grad, (A(2), A(2), i64, A(2))),
        **{name: (OPS[str(F)][name], sig) for name, sig in {
            "fill": (A(1), F),
            "reverse_time": (A(2), A(2)),
            "merge": (i64, A(3), A(3), A(3)),
            "unmerge": (i64, i64, A(3), A(3), A(3), A(3), i64),
            "mul_into": (A(1), A(1)),
            "add_into": (A(1), i64, A(1)),
            "colsum_into": (A(2), A(1), i64),
            "gather": (A(1), i64, A(2, i64), A(2)),
            "scatter_add": (A(1), i64, A(2, i64), A(2)),
        }.items()},
        **{name: (UPDATE[str(F)][name], sig) for name, sig in {
            "sgd": (A(1), A(1), A(1), F, F, F, i64, i64, F, i64),
            "rmsprop": (A(1),) * 5 + (F,) * 4 + (i64, F, F, i64, F),
            "adam": (A(1),) * 5 + (F, F, i64, F, F, F, F, F, F, i64),
            "clip_value": (A(1), F),
            "scale": (A(1), F),
        }.items()},
        # float64 sums of squares whatever the gradient's type, as the reference's norm
        "sumsq": (sumsq, (A(1), A(1, types.float64))),
        # float64 sampling whatever the logits' type, as the reference's sample_token
        "sample_step": (sample_step, (i64, A(2), A(2, i64), A(1, types.uint8),
                                      A(2, types.float64), types.float64, i64, i64, i64,
                                      A(2, types.uint8), A(2, types.uint8), A(2, i64),
                                      A(2, i64), A(1, i64))),
    }


def main():
    for F in (types.float32, types.float64):
        for name, (kernel, sig) in signatures(F).items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            assert ".entry" in ptx, name
            if F == types.float32 and name not in ("sumsq", "sample_step"):  # float32 math
                assert ".f64" not in ptx, f"{name}: float64 operations in the float32 kernel"
            if name in ("forward_kernel", "backward_kernel"):  # persistent: a grid barrier
                assert "cudaCGSynchronize" in ptx, name
            print(F, name, "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
