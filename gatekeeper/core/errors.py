"""Expected errors, each naming the gRPC status it is reported as (gatekeeper/api/errors.py reports it)."""

from __future__ import annotations


class GatekeeperError(Exception):
    """Base of the errors a client may see; anything else is a bug, reported as INTERNAL."""

    status = "INTERNAL"  # a grpc.StatusCode name


class InvalidArgument(GatekeeperError):
    """A request the gatekeeper cannot decide; ``field`` names where (``items[3].fee_ocur_time``)."""

    status = "INVALID_ARGUMENT"  # a grpc.StatusCode name

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class RegistryNotLoaded(GatekeeperError):
    """No registry snapshot is in the cache yet: nothing can be decided."""

    status = "UNAVAILABLE"  # a grpc.StatusCode name

    def __init__(self) -> None:
        super().__init__("no registry snapshot is loaded in the eligibility cache")


class RegistryBehind(GatekeeperError):
    """The caller asked for registry data newer than the cache holds (freshness on demand)."""

    status = "FAILED_PRECONDITION"  # a grpc.StatusCode name

    def __init__(self, wanted_seq: int, have_seq: int) -> None:
        super().__init__(
            f"min_registry_version: the cache holds registry data up to seq {have_seq}, "
            f"older than the {wanted_seq} asked for; retry once the loader has applied it"
        )


class PermissionDenied(GatekeeperError):
    """The caller's certificate does not bind it to the institution it submits for."""

    status = "PERMISSION_DENIED"  # a grpc.StatusCode name

    def __init__(self, caller: str, institution: str, field: str = "fixmedins_code") -> None:
        super().__init__(f"{field}: {caller} may not submit for institution {institution}")
        self.institution = institution


class Unauthenticated(GatekeeperError):
    """The caller's certificate cannot be trusted to say who it is."""

    status = "UNAUTHENTICATED"  # a grpc.StatusCode name


class CacheUnavailable(GatekeeperError):
    """The eligibility cache (Redis) could not be read."""

    status = "UNAVAILABLE"  # a grpc.StatusCode name


class NeverRead(CacheUnavailable):
    """The eligibility cache is unreadable and this process has never read registry data:
    degraded mode has nothing to stand in for."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"no registry data read since this process started, and {cause}")


class CacheCorrupt(GatekeeperError):
    """The eligibility cache holds data this version cannot read: a bug, not a client error."""
