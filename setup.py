"""The one thing pyproject.toml cannot say without an experimental table: the C extensions.

gatekeeper/_speedups.c is the common claim's path in C; loader/_speedups.c a snapshot's rows
parsed and gathered in C. Both are optional: where they cannot be built (no C compiler or
Python headers), the Python they stand in for works alone (``gatekeeper serve`` says so in
its start-up line; the loader is slower).
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(
    ext_modules=[
        Extension("gatekeeper._speedups", sources=["gatekeeper/_speedups.c"], optional=True, extra_compile_args=FLAGS),
        Extension("loader._speedups", sources=["loader/_speedups.c"], optional=True, extra_compile_args=FLAGS),
    ]
)
