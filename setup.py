"""Declares the Cython extensions; all metadata lives in pyproject.toml.

Compiler directives live here and only here. ``LOYALTYMETRICS_DEBUG=1`` at
build time turns bounds checking back on (and adds C assertions) for
debugging a kernel.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("LOYALTYMETRICS_DEBUG", "") not in ("", "0")

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
        "loyaltymetrics._guard",
        ["kernels/_guard.pyx"],
        extra_compile_args=["-O3"] + ([] if DEBUG else ["-DNDEBUG"]),
    ),
]

setup(
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
