"""The loader's Redis Functions and its Python side enforce the same per-call limits."""

from __future__ import annotations

import re
from importlib import resources

from loader.cache import CALL_BUDGET_BYTES, MAX_PERIODS


def test_the_lua_limits_are_the_python_ones() -> None:
    source = resources.files("loader").joinpath("gatekeeper.lua").read_text(encoding="utf-8")

    def constant(name: str) -> int:
        match = re.search(rf"^local {name} = (\d+)$", source, re.MULTILINE)
        assert match is not None, f"{name} is not defined in gatekeeper.lua"
        return int(match.group(1))

    assert (constant("MAX_PERIODS"), constant("CALL_BUDGET_BYTES")) == (MAX_PERIODS, CALL_BUDGET_BYTES)
