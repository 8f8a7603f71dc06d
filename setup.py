"""The one thing pyproject.toml cannot say without an experimental table: the C extension.

gatekeeper/_speedups.c is the common claim's path in C. It is optional: where it cannot be
built (no C compiler or Python headers), the Python it stands in for serves alone, and
``gatekeeper serve`` says so in its start-up line.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gatekeeper._speedups",
            sources=["gatekeeper/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ]
)
