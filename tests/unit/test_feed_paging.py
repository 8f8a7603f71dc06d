"""Paging of the change feed: the cursor moves only to what a page proves (loader/feed.py)."""

from __future__ import annotations

import pytest

from loader.feed import FeedPage, MalformedPage, check_paging
from loader.feed_client import FeedError, origin_of

AFTER = 100


def page(seqs: list[object], next_after: int, has_more: bool = False) -> FeedPage:
    return FeedPage([{"seq": seq} for seq in seqs], next_after, has_more)


@pytest.mark.parametrize(
    "valid",
    [
        page([101, 105], 105),  # to the last change
        page([101, 105], 105, has_more=True),
        page([], AFTER),  # caught up
        page(["101", "102"], 102),  # seq as text, as CSV-minded registries send it
        page([99, 100], AFTER),  # a re-delivery of what is applied: harmless, no progress needed
        page([101, "broken"], 101),  # a change without a readable seq proves nothing
    ],
)
def test_pages_whose_cursor_matches_what_they_hold_are_accepted(valid: FeedPage) -> None:
    check_paging(valid, AFTER)


@pytest.mark.parametrize(
    ("invalid", "why"),
    [
        (page([101], 10**15), "beyond"),  # would skip every real change for good
        (page([], AFTER + 1), "beyond"),  # an empty page proves nothing
        (page([101, "broken"], 102), "beyond"),
        (page([101, 2**53], 2**53), "beyond"),  # a seq the loader refuses proves nothing
        (page([101], AFTER - 1), "before"),  # backwards
        (page([101, 105], 103), "below"),  # the next page repeats 105
        (page([], AFTER, has_more=True), "has_more"),  # would ask the same again at once
        (page([100], AFTER, has_more=True), "has_more"),
    ],
)
def test_pages_that_would_skip_repeat_or_spin_are_refused(invalid: FeedPage, why: str) -> None:
    with pytest.raises(MalformedPage, match=why):
        check_paging(invalid, AFTER)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://Feed.example:8808/v1", ("http", "feed.example", 8808)),
        ("https://feed.example/x", ("https", "feed.example", 443)),
        ("http://feed.example", ("http", "feed.example", 80)),
    ],
)
def test_origins_compare_scheme_host_and_port(url: str, origin: tuple[str, str, int]) -> None:
    assert origin_of(url) == origin


@pytest.mark.parametrize("url", ["ftp://feed.example/", "feed.example:8808", "http://feed.example:99999/", "http:///x"])
def test_urls_other_than_http_are_refused(url: str) -> None:
    with pytest.raises(FeedError):
        origin_of(url)
