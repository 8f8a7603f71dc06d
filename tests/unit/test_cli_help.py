"""Both commands' help: every option says what it is, and what happens when it is not given."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from gatekeeper import cli
from gatekeeper.cli import format_claim_table
from gatekeeper.v1 import gatekeeper_pb2 as pb
from loader import cli as loader_cli


def parsers(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """A parser and every subcommand's parser under it, by the command line that reaches it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


ALL = dict(parsers(cli.build_parser(), "gatekeeper")) | dict(parsers(loader_cli.build_parser(), "gatekeeper-loader"))


@pytest.mark.parametrize("command", sorted(ALL))
def test_every_option_has_help_and_its_default_shown(command: str) -> None:
    parser = ALL[command]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{command} {action.option_strings or action.dest}: no help text"
    text = " ".join(parser.format_help().split())  # unwrapped
    for action in parser._actions:
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, "", argparse.SUPPRESS)
            and action.help != argparse.SUPPRESS
        ):
            assert f"(default: {default})" in text or "default" in str(action.help), (command, action.option_strings)


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--target", "h:1", "health"],
        ["health", "--json", "--target", "h:1"],
        ["--target", "h:1", "health", "--json"],
    ],
)
def test_global_options_mean_the_same_before_and_after_the_command(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert (args.json, args.target, args.command) == (True, "h:1", "health")


def test_a_global_option_not_given_after_the_command_keeps_its_value_from_before() -> None:
    args = cli.build_parser().parse_args(["--database-url", "postgresql://db/x", "audit", "migrate"])
    assert args.database_url == "postgresql://db/x"
    args = loader_cli.build_parser().parse_args(["--redis-url", "redis://r:1/0", "--json", "status"])
    assert (args.redis_url, args.json) == ("redis://r:1/0", True)


def test_a_claim_decided_in_degraded_mode_says_so_under_its_table() -> None:

    checked = pb.ItemDecision(feedetl_sn="1", verdict=pb.VERDICT_ALLOW, reason=pb.REASON_OK, enforced=True)
    unchecked = pb.ItemDecision(
        feedetl_sn="2", verdict=pb.VERDICT_ALLOW, reason=pb.REASON_UNVERIFIED, prac_psn_code="D110105000001"
    )
    degraded = pb.CheckClaimResponse(verdict=pb.CLAIM_VERDICT_ALLOW, enforced=True, items=[checked, unchecked])
    table = format_claim_table(degraded)
    assert "DEGRADED MODE: 1 item(s) not checked" in table
    assert "1 settled unverified and recorded for review, 0 blocked" in table

    normal = pb.CheckClaimResponse(verdict=pb.CLAIM_VERDICT_ALLOW, enforced=True, items=[checked])
    assert "DEGRADED" not in format_claim_table(normal)
