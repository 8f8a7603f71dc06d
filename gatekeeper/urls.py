"""Server URLs, read as text only: which Redis URLs name a Redis Cluster, and a URL fit to print."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """For a cluster URL, the same URL with the one-Redis scheme redis-py parses; else None."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme.lower())
    return None if scheme is None else urlunsplit(parts._replace(scheme=scheme))


def url_shown(url: str) -> str:
    """``url`` (Redis's or PostgreSQL's) with its password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
