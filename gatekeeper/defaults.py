"""Default values of every setting, as named constants: a leaf module that imports nothing."""

from __future__ import annotations

import os

REDIS_URL = "redis://127.0.0.1:6379/0"
# Where scripts/demo writes the addresses of its Redis, PostgreSQL, gatekeeper and feed; the
# client commands read it when neither a flag nor the environment names a server.
DEMO_STATE = ".demo/state.json"
LISTEN = "127.0.0.1:50051"
WORKERS = os.cpu_count() or 1
SHUTDOWN_GRACE_SECONDS = 10.0
HEALTH_POLL_SECONDS = 1.0
ACTIVITY_LOG_SECONDS = 60.0  # how often a busy worker logs what it did (0: never)
REDIS_TIMEOUT_SECONDS = 0.5  # a hung Redis must not hold a claim longer than this
# Snapshots come daily: one missed load is an alert (gatekeeper_registry_age_seconds), two
# take the service out of rotation rather than let it judge on data days old.
MAX_REGISTRY_AGE_SECONDS = 2 * 86_400.0
# RPCs one worker works on at once; more are refused with RESOURCE_EXHAUSTED. A claim takes
# about a millisecond of CPU, so this many is a few hundred milliseconds of work queued.
MAX_CONCURRENT_RPCS = 256
# One HTTP/2 connection may carry this many RPCs at once: a single caller cannot take more
# than an eighth of a worker's slots with one connection.
MAX_STREAMS_PER_CONNECTION = 32
# A caller has this long, from its RPC's headers, to send the whole request message; a stream
# that sends headers and then nothing (or less than it promised) is ended DEADLINE_EXCEEDED.
REQUEST_READ_SECONDS = 10.0
# Connections are closed (GOAWAY) after this age, RPCs in flight given the grace to finish;
# after that the connection is cut, whatever it still holds (a client that never reads).
# Callers reconnect at once, which also spreads them over workers restarted since.
MAX_CONNECTION_AGE_SECONDS = 300.0
MAX_CONNECTION_AGE_GRACE_SECONDS = 30.0
# The JSON-over-HTTP door: a keep-alive connection with no request in progress is closed
# after this long (an HTTP/1.1 client reconnects; a gRPC client is pinged instead).
HTTP_IDLE_SECONDS = 60.0

# Requests.
MAX_ITEMS = 5_000
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_BATCH_CLAIMS = 10_000
# A whole CheckClaims request: deciding takes about a third of a second per megabyte on one
# core, and a worker does nothing else meanwhile. Checked on the bytes, before decoding.
MAX_BATCH_BYTES = 1024 * 1024

# The near cache. Notifications keep it coherent within milliseconds; the age bound is the
# safety net for a notification path that fails silently.
NEAR_CACHE_ENTRIES = 1_000_000
NEAR_CACHE_MAX_AGE_SECONDS = 120.0
NEAR_CACHE_WARM = True  # filled from each snapshot at start and after each switch
C_PATH = True  # plain claims parsed, decided and answered in C where gatekeeper._speedups was built
# Registry changes are decided days ahead and arrive a few a minute: a record an hour old
# is almost always still right, and far better than none while Redis is away.
DEGRADED_MAX_AGE_SECONDS = 3600.0

# The decision audit.
AUDIT_SPOOL_DIR = "audit-spool"

LOG_FORMAT = "json"
LOG_FORMATS = ("json", "text")

# The decision record (PostgreSQL).
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/gatekeeper"
DATABASE_TIMEOUT_SECONDS = 5.0  # connecting, and each statement of a batch's transaction
AUDIT_MAX_QUEUED = 100_000  # decisions held in memory at most; beyond, decisions are refused
AUDIT_RETENTION_DAYS = 400  # a year of decisions, and the weeks a late window reaches back
