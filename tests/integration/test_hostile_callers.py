"""Hostile callers over raw HTTP/2 frames: unfinished requests, unread responses, huge batches."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Iterator

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatekeeper.core.records import PractitionerRecord, StatusPeriod
from gatekeeper.defaults import MAX_BATCH_BYTES
from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.integration.conftest import RunningGatekeeper, StartGatekeeper
from tests.integration.test_hardening import refused
from tests.memory_store import MemoryEligibilityStore

DOCTOR = "D110105000001"
REGISTERED = PractitionerRecord(1, (StatusPeriod(status=1, begntime=0, chg_id="c1", seq=1),))
CHECK_CLAIM = "/gatekeeper.v1.Gatekeeper/CheckClaim"
WAIT_SECONDS = 10.0


def claim(claim_id: str = "c") -> pb.CheckClaimRequest:
    item = pb.LineItem(feedetl_sn="1", fee_ocur_time="2026-06-01 10:00:00", bilg_dr_codg=DOCTOR, amount_fen=100)
    return pb.CheckClaimRequest(claim_id=claim_id, fixmedins_code="H11010500001", items=[item])


def grpc_frame(message: bytes, promised: int | None = None) -> bytes:
    """A gRPC length-prefixed message; ``promised`` claims more bytes than are sent."""
    return struct.pack(">BI", 0, len(message) if promised is None else promised) + message


class RawHttp2:
    """An HTTP/2 client over plain TCP that sends what it likes and reads only when told to."""

    def __init__(self, port: int, *, window: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if window is not None:  # a zero window: the server may not send a byte of any response body
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.statuses: dict[int, str] = {}  # stream id -> grpc-status of the streams that ended
        self.refused: set[int] = set()  # streams the server reset (RST_STREAM)
        self.closed = False
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def open(self, method: str = CHECK_CLAIM, body: bytes = b"", end_stream: bool = False) -> int:
        """Open a stream: its headers, then ``body`` (ending the request only with ``end_stream``)."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=end_stream and not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=end_stream)
        self._flush()
        return stream_id

    def read(self, timeout: float) -> None:
        """Read and account for what the server sent within ``timeout`` (until it closes)."""
        deadline = time.monotonic() + timeout
        while not self.closed and (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                return
            data = self.sock.recv(65536)
            if not data:
                self.closed = True
                return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.closed = True
                return
            for event in events:
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    headers = dict(event.headers)
                    if "grpc-status" in headers:
                        self.statuses[event.stream_id] = str(headers["grpc-status"])
                elif isinstance(event, h2.events.StreamReset):
                    self.refused.add(event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.closed = True
            with_pending = self.conn.data_to_send()  # acks of pings and settings
            if with_pending:
                self.sock.sendall(with_pending)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def attackers() -> Iterator[list[RawHttp2]]:
    opened: list[RawHttp2] = []
    yield opened
    for attacker in opened:
        attacker.close()


def answers(gatekeeper: RunningGatekeeper) -> None:
    """A well-behaved caller is decided, and health answers."""
    assert gatekeeper.stub.CheckClaim(claim(), timeout=WAIT_SECONDS).verdict == pb.CLAIM_VERDICT_ALLOW
    health = health_pb2_grpc.HealthStub(gatekeeper.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)


def test_one_connection_of_unfinished_requests_cannot_take_every_slot(
    start_gatekeeper: StartGatekeeper, attackers: list[RawHttp2]
) -> None:
    gatekeeper = start_gatekeeper(store=MemoryEligibilityStore({DOCTOR: REGISTERED}))
    attacker = RawHttp2(gatekeeper.port)
    attackers.append(attacker)
    partial = grpc_frame(claim().SerializeToString(), promised=1_000_000)
    for n in range(300):  # more than the 256 slots of a worker, sent before the server's settings are read
        attacker.open(body=partial if n % 2 else b"")
    attacker.read(timeout=0.5)  # what the server answered at once: refused streams beyond its limit
    answers(gatekeeper)
    assert len(attacker.refused) >= 300 - 64, "the server should refuse streams beyond its per-connection limit"


def test_unfinished_requests_are_ended_after_the_request_read_time(
    start_gatekeeper: StartGatekeeper, attackers: list[RawHttp2]
) -> None:
    gatekeeper = start_gatekeeper(
        store=MemoryEligibilityStore({DOCTOR: REGISTERED}),
        max_concurrent_rpcs=32,
        max_streams_per_connection=8,
        request_read_seconds=1.0,
    )
    partial = grpc_frame(claim().SerializeToString(), promised=1_000_000)
    before = refused("DEADLINE_EXCEEDED", "request_read_timeout")
    exhausted_before = refused("RESOURCE_EXHAUSTED", "concurrency_limit")
    streams: list[tuple[RawHttp2, int]] = []
    for _ in range(5):  # five connections of eight unfinished requests: more than the 32 slots
        attacker = RawHttp2(gatekeeper.port)
        attackers.append(attacker)
        streams += [(attacker, attacker.open(body=partial)) for _ in range(8)]
    # Every slot is taken for now (once the server has read the attackers' headers): a caller
    # is refused, and that refusal is counted.
    deadline = time.monotonic() + WAIT_SECONDS
    code = grpc.StatusCode.OK
    while code is not grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline:
        try:
            gatekeeper.stub.CheckClaim(claim(), timeout=WAIT_SECONDS)
        except grpc.RpcError as error:
            code = error.code()
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused("RESOURCE_EXHAUSTED", "concurrency_limit") > exhausted_before
    # Within the read time each unfinished request is ended, DEADLINE_EXCEEDED, and counted.
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and not all(sid in a.statuses or sid in a.refused for a, sid in streams):
        for attacker in attackers:
            attacker.read(timeout=0.05)
    # (Those beyond the 32 slots were refused RESOURCE_EXHAUSTED at once.)
    codes = [a.statuses.get(sid) for a, sid in streams]
    timed_out = codes.count(str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]))
    exhausted = codes.count(str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]))
    assert 31 <= timed_out <= 32  # one slot may have been the well-behaved caller's, for a moment
    assert timed_out + exhausted == len(streams)
    assert refused("DEADLINE_EXCEEDED", "request_read_timeout") == before + timed_out
    # The slots are free again while the attackers' connections stay open.
    answers(gatekeeper)


def test_a_client_that_never_reads_its_responses_pins_no_slot_and_is_cut_off(
    start_gatekeeper: StartGatekeeper, attackers: list[RawHttp2]
) -> None:
    gatekeeper = start_gatekeeper(
        store=MemoryEligibilityStore({DOCTOR: REGISTERED}),
        max_concurrent_rpcs=8,
        max_connection_age_seconds=1.0,
        max_connection_age_grace_seconds=1.0,
    )
    attacker = RawHttp2(gatekeeper.port, window=0)
    attackers.append(attacker)
    whole = grpc_frame(claim().SerializeToString())
    for _ in range(16):  # whole requests, whose answers can never be sent: twice the slots
        attacker.open(body=whole, end_stream=True)
    answers(gatekeeper)  # the answered-but-unsent requests hold no slot
    started = time.monotonic()
    while not attacker.closed and time.monotonic() - started < WAIT_SECONDS:
        attacker.read(timeout=0.5)
    assert attacker.closed, "the server should close a connection older than its maximum age (plus grace)"
    answers(gatekeeper)


def big_claim(claim_id: str, items: int) -> pb.CheckClaimRequest:
    lines = [
        pb.LineItem(feedetl_sn=str(n), fee_ocur_time="2026-06-01 10:00:00", bilg_dr_codg=DOCTOR, amount_fen=100)
        for n in range(items)
    ]
    return pb.CheckClaimRequest(claim_id=claim_id, fixmedins_code="H11010500001", items=lines)


def test_a_batch_larger_than_its_total_limit_is_refused_before_it_is_decoded(
    start_gatekeeper: StartGatekeeper,
) -> None:
    gatekeeper = start_gatekeeper(store=MemoryEligibilityStore({DOCTOR: REGISTERED}))
    # Every claim is within the per-claim limits (items, bytes); together they are not.
    batch = pb.CheckClaimsRequest(claims=[big_claim(f"c{n}", 5_000) for n in range(6)])
    size = batch.ByteSize()
    assert size > MAX_BATCH_BYTES
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaims(batch, timeout=WAIT_SECONDS)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        f"request: is {size} bytes, more than the maximum of {MAX_BATCH_BYTES} for a batch"
    )
    # A batch within the limit is decided, claim by claim.
    small = pb.CheckClaimsRequest(claims=batch.claims[:2])
    assert [r.response.verdict for r in gatekeeper.stub.CheckClaims(small, timeout=WAIT_SECONDS).results] == [
        pb.CLAIM_VERDICT_ALLOW
    ] * 2


@pytest.mark.parametrize("moment", ["0001-01-01 00:00:00", "1969-12-31 23:59:59", "9999-12-31 23:59:59"])
def test_a_time_out_of_range_is_invalid_argument_naming_the_field(
    start_gatekeeper: StartGatekeeper, moment: str
) -> None:
    gatekeeper = start_gatekeeper(store=MemoryEligibilityStore({DOCTOR: REGISTERED}))
    request = claim()
    request.items[0].fee_ocur_time = moment
    calls = {
        "at_time": lambda: gatekeeper.stub.GetPractitioner(
            pb.GetPractitionerRequest(prac_psn_code=DOCTOR, at_time=moment), timeout=WAIT_SECONDS
        ),
        "items[0].fee_ocur_time": lambda: gatekeeper.stub.CheckClaim(request, timeout=WAIT_SECONDS),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert raised.value.details().startswith(f"{field}: "), raised.value.details()
