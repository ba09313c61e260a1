"""Declares the Cython extensions; all metadata lives in pyproject.toml.

Compiler directives live here and only here. ``LOYALTYMETRICS_DEBUG=1`` at
build time turns bounds checking back on (and adds C assertions) for
debugging a kernel.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("LOYALTYMETRICS_DEBUG", "") not in ("", "0")

# GCC only: room for _scan's 16 copies of the row loop (3 fused key/timestamp types x 2 refund
# modes) to be inlined with refund_row in them. At GCC's default unit-growth budget, spent on
# Cython's own helpers first, refund_row is called rather than inlined and its run cursor goes to
# memory: +25% instructions per refund-mode row (benchmarks/zones_instructions.py). With the block
# path in it, scan_rows itself is inlined into its callers only with the room _analyses has below
# (else one copy a type takes the refunds mode as a variable: +30% instructions a refunds row).
GCC_SCAN_ARGS = ["--param=inline-unit-growth=100", "--param=max-inline-insns-single=2000",
                 "--param=large-function-growth=400"]
# _analyses likewise, and more: its cohort_rows / hist_rows (6 fused copies each, two refund modes
# each) are inlined into their callers only with this room, so each copy has its refunds mode a
# constant and the zone tables in registers; called out of line (GCC's defaults since the zone
# tables) the kernel ran +35% instructions per row (callgrind on lm.cohorts, 500k rows).
GCC_ANALYSES_ARGS = ["--param=inline-unit-growth=100", "--param=max-inline-insns-single=2000",
                     "--param=large-function-growth=400"]

extensions = [
    Extension(
        "loyaltymetrics._scan",
        ["kernels/_scan.pyx"],
        extra_compile_args=["-O3"] + ([] if DEBUG else ["-DNDEBUG"]),
    ),
    Extension(
        "loyaltymetrics._analyses",
        ["kernels/_analyses.pyx"],
        extra_compile_args=["-O3"] + ([] if DEBUG else ["-DNDEBUG"]),
    ),
    Extension(
        "loyaltymetrics._rfm",
        ["kernels/_rfm.pyx"],
        extra_compile_args=["-O3"] + ([] if DEBUG else ["-DNDEBUG"]),
    ),
    Extension(
        "loyaltymetrics._sort",
        ["kernels/_sort.pyx"],
        extra_compile_args=["-O3"] + ([] if DEBUG else ["-DNDEBUG"]),
    ),
    Extension(
        "loyaltymetrics._csvparse",
        ["kernels/_csvparse.pyx"],
        extra_compile_args=["-O3"] + ([] if DEBUG else ["-DNDEBUG"]),
    ),
    Extension(
        "loyaltymetrics._guard",
        ["kernels/_guard.pyx"],
        extra_compile_args=["-O3"] + ([] if DEBUG else ["-DNDEBUG"]),
    ),
]

def _is_gcc(compiler):
    """True when the C compiler is GCC (clang, also called "cc" or "gcc" on some systems, is not)."""
    import subprocess

    command = getattr(compiler, "compiler_so", None)
    if not command:
        return False
    try:
        out = subprocess.run([command[0], "--version"], capture_output=True, text=True).stdout.lower()
    except OSError:
        return False
    return "clang" not in out and ("gcc" in out or "free software foundation" in out)


class BuildExt(build_ext):
    def build_extensions(self):
        if _is_gcc(self.compiler):
            for ext in self.extensions:
                if ext.name == "loyaltymetrics._scan":
                    ext.extra_compile_args = ext.extra_compile_args + GCC_SCAN_ARGS
                if ext.name == "loyaltymetrics._analyses":
                    ext.extra_compile_args = ext.extra_compile_args + GCC_ANALYSES_ARGS
        super().build_extensions()


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        include_path=["kernels"],
        language_level=3,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": DEBUG,
        },
    ),
)
