"""Build the Cython extensions: every ``src/<stem>.pyx`` becomes ``cyrnn.<stem>``.

OpenMP (``-fopenmp``) is used only when a tiny test program builds with it, so
the package still builds (with serial row loops) where OpenMP is missing. Set
``CYRNN_NATIVE=1`` at build time to add ``-march=native`` (the wheel is then
tuned to, and only portable to, the build machine's CPU).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent

COMPILER_DIRECTIVES = {
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "language_level": 3,
    "initializedcheck": False,
}

_OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return (n > 0 && omp_get_max_threads() > 0) ? 0 : 1;
}
"""


def _compiler_flags(compiler_type):
    """Optimisation and OpenMP flags for the compiler family."""
    if compiler_type == "msvc":
        return ["/O2"], ["/openmp"], []
    opt = ["-O3"]
    if os.environ.get("CYRNN_NATIVE") == "1":
        opt.append("-march=native")
    return opt, ["-fopenmp"], ["-fopenmp"]


def _has_openmp(compiler, compile_flags, link_flags):
    """Whether ``compiler`` can compile and link a small OpenMP program."""
    tmp = tempfile.mkdtemp(prefix="cyrnn-omp-")
    try:
        src = os.path.join(tmp, "omp_probe.c")
        with open(src, "w") as f:
            f.write(_OPENMP_PROBE)
        devnull = open(os.devnull, "w")
        saved = os.dup(2)
        try:  # keep a failing probe's compiler errors out of the build log
            os.dup2(devnull.fileno(), 2)
            objects = compiler.compile([src], output_dir=tmp, extra_postargs=compile_flags)
            compiler.link_executable(objects, "omp_probe", output_dir=tmp,
                                     extra_postargs=link_flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            devnull.close()
        return True
    except Exception:  # CompileError, LinkError, missing compiler support
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """build_ext that adds -O3 (and -march=native on request) and probes OpenMP."""

    def build_extensions(self):
        opt, omp_compile, omp_link = _compiler_flags(self.compiler.compiler_type)
        openmp = _has_openmp(self.compiler, omp_compile, omp_link)
        print(f"cyrnn: OpenMP {'enabled' if openmp else 'not available; serial loops'}",
              file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + opt
            if openmp:
                ext.extra_compile_args += omp_compile
                ext.extra_link_args = list(ext.extra_link_args or []) + omp_link
        super().build_extensions()


def _extensions():
    sources = sorted((HERE / "src").glob("*.pyx"))
    extensions = [
        Extension(
            f"cyrnn.{path.stem}",
            [str(path.relative_to(HERE))],
            include_dirs=[np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for path in sources
    ]
    return cythonize(extensions, compiler_directives=COMPILER_DIRECTIVES)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
