"""The one thing pyproject.toml cannot say without an experimental table: the C extensions.

gatekeeper/_speedups.c is the common claim's path in C; loader/_speedups.c a snapshot's rows
parsed and gathered in C. Both are optional: where they cannot be built (no C compiler or
Python headers), the Python they stand in for works alone (``gatekeeper serve`` says so in
its start-up line; the loader is slower).
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
SHARED = ["gatekeeper/_formats.h"]  # the national formats both check

setup(
    ext_modules=[
        Extension(
            f"{package}._speedups",
            sources=[f"{package}/_speedups.c"],
            depends=SHARED,
            optional=True,
            extra_compile_args=FLAGS,
        )
        for package in ("gatekeeper", "loader")
    ]
)
