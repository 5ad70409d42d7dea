"""Build the Cython core; everything else about the package lives in pyproject.toml."""
import platform

from Cython.Build import cythonize
from setuptools import Extension, setup

# x86-64-v2 is the 2009 baseline (every x86-64 server since Nehalem): it brings POPCNT, which
# the Hamming search runs on; without it __builtin_popcountll becomes a slow library call.
arch_flags = ["-march=x86-64-v2"] if platform.machine() in ("x86_64", "AMD64") else []

simhash = Extension(
    "misalign._simhash",
    sources=["misalign/_simhash.pyx"],
    include_dirs=["misalign"],
    extra_compile_args=["-O3", "-fopenmp", *arch_flags],
    extra_link_args=["-fopenmp"],
)

lines = Extension("misalign._lines", sources=["misalign/_lines.pyx"], extra_compile_args=["-O3"])

setup(ext_modules=cythonize([simhash, lines], compiler_directives={"language_level": "3"}))
