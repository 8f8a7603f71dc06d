"""The demo change-feed server: paging, bad requests, fault injection and new change files, over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loader.feed import ChangeFeedServer, MalformedPage, changes_url, parse_page
from loader.generate import GeneratedRegistry, generate
from loader.rows import parse_row


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> GeneratedRegistry:
    return generate(tmp_path_factory.mktemp("feed"), 3_000, changes=250, changes_per_file=40)


@pytest.fixture
def change_dir(registry: GeneratedRegistry, tmp_path: Path) -> Path:
    """A private copy of the change files, so a test may drop new ones in."""
    for path in registry.change_files:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


@pytest.fixture
def feed(change_dir: Path) -> Iterator[ChangeFeedServer]:
    with ChangeFeedServer(change_dir) as server:
        yield server


def expected_changes(registry: GeneratedRegistry) -> list[dict[str, Any]]:
    return [json.loads(line) for path in registry.change_files for line in path.read_text("utf-8").splitlines()]


def get(url: str) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body), for error answers too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_the_server_binds_a_free_loopback_port(feed: ChangeFeedServer) -> None:
    assert feed.port > 0
    assert feed.url == f"http://127.0.0.1:{feed.port}"


def test_pages_deliver_every_change_once_in_order(feed: ChangeFeedServer, registry: GeneratedRegistry) -> None:
    received: list[dict[str, Any]] = []
    after, requests = registry.watermark_seq, 0
    while True:
        status, page = get(changes_url(feed.url, after, limit=37))
        requests += 1
        assert status == 200
        assert len(page["changes"]) <= 37
        received.extend(page["changes"])
        if page["changes"]:
            assert page["next_after"] == page["changes"][-1]["seq"]
        after = page["next_after"]
        if not page["has_more"]:
            break
    assert received == expected_changes(registry)
    assert requests == 7  # ceil(250 / 37)
    assert after == registry.last_change_seq


def test_the_default_limit_serves_everything_from_the_start(
    feed: ChangeFeedServer, registry: GeneratedRegistry
) -> None:
    status, page = get(f"{feed.url}/v1/changes")
    assert status == 200
    assert page["changes"] == expected_changes(registry)
    assert page["has_more"] is False


def test_a_limit_above_the_maximum_is_capped_not_refused(feed: ChangeFeedServer) -> None:
    status, page = get(changes_url(feed.url, 0, limit=50_000))
    assert status == 200
    assert len(page["changes"]) == 250


def test_after_beyond_the_end_gives_an_empty_page(feed: ChangeFeedServer, registry: GeneratedRegistry) -> None:
    after = registry.last_change_seq + 1_000
    status, page = get(changes_url(feed.url, after))
    assert (status, page) == (200, {"changes": [], "next_after": after, "has_more": False})


@pytest.mark.parametrize("query", ["after=abc", "after=-1", "after=", "limit=0", "limit=ten", "after=1&after=2", "x"])
def test_bad_query_parameters_are_400(feed: ChangeFeedServer, query: str) -> None:
    status, body = get(f"{feed.url}/v1/changes?{query}")
    assert status == 400
    assert body["error"]


def test_an_unknown_path_is_404(feed: ChangeFeedServer) -> None:
    status, body = get(f"{feed.url}/v2/changes?after=0")
    assert status == 404
    assert "/v1/changes" in body["error"]


def test_fail_every_answers_every_nth_request_with_503(change_dir: Path) -> None:
    with ChangeFeedServer(change_dir, fail_every=2) as feed:
        statuses = [get(changes_url(feed.url, 0, limit=5))[0] for _ in range(6)]
    assert statuses == [200, 503, 200, 503, 200, 503]


def test_a_new_change_file_is_served(feed: ChangeFeedServer, registry: GeneratedRegistry, change_dir: Path) -> None:
    last = registry.last_change_seq
    status, page = get(changes_url(feed.url, last))
    assert (status, page["changes"]) == (200, [])
    change = {**expected_changes(registry)[-1], "chg_id": "CHG-NEW", "seq": last + 5}
    (change_dir / f"changes-{last + 5}-{last + 5}.jsonl").write_text(json.dumps(change) + "\n", encoding="utf-8")
    status, page = get(changes_url(feed.url, last))
    assert status == 200
    assert page == {"changes": [change], "next_after": last + 5, "has_more": False}


def test_a_change_in_two_files_is_served_once(
    feed: ChangeFeedServer, registry: GeneratedRegistry, change_dir: Path
) -> None:
    (change_dir / "redelivered.jsonl").write_bytes(registry.change_files[0].read_bytes())
    status, page = get(changes_url(feed.url, 0, limit=10_000))
    assert status == 200
    assert page["changes"] == expected_changes(registry)


def test_parsed_pages_pass_the_loader_validation(feed: ChangeFeedServer) -> None:
    with urllib.request.urlopen(changes_url(feed.url, 0, limit=100), timeout=10) as response:
        page = parse_page(response.read())
    assert len(page.changes) == 100
    assert page.has_more is True
    assert page.next_after == page.changes[-1]["seq"]
    for change in page.changes:
        parse_row(change)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"changes": {}, "next_after": 0, "has_more": false}',
        b'{"changes": [], "next_after": true, "has_more": false}',
        b'{"changes": [], "next_after": 0}',
    ],
    ids=["not-json", "not-an-object", "changes-not-a-list", "next-after-a-bool", "has-more-missing"],
)
def test_malformed_pages_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedPage):
        parse_page(body)


def test_a_bad_change_inside_a_page_is_left_to_the_follower_to_quarantine() -> None:
    page = parse_page(b'{"changes": [1, {"seq": 2}], "next_after": 2, "has_more": false}')
    assert page.changes == [1, {"seq": 2}]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org"])
def test_a_non_loopback_address_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        ChangeFeedServer(tmp_path, host=host)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        ChangeFeedServer(tmp_path / "absent")
