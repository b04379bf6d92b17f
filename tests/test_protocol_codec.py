"""The sans-IO codec on its own: round trips, streaming splits, and malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbproxy.protocol.errors import ProtocolViolation
from dbproxy.protocol.framing import FRONTEND_TYPES, Frame, FrameScanner, frame
from dbproxy.protocol.messages import (
    Authentication,
    BackendKeyData,
    Bind,
    Close,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyFail,
    Describe,
    ErrorResponse,
    Execute,
    Flush,
    FunctionCall,
    NegotiateProtocolVersion,
    NoticeResponse,
    NotificationResponse,
    ParameterStatus,
    Parse,
    PasswordMessage,
    Query,
    ReadyForQuery,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
)
from dbproxy.protocol.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    read_startup_packet,
)

text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)
blob = st.binary(max_size=64)
i16 = st.integers(0, 1)
i32 = st.integers(-(2**31), 2**31 - 1)

frontend_messages = st.one_of(
    st.builds(Query, text),
    st.builds(Parse, text, text, st.tuples(*[st.integers(0, 2**32 - 1)] * 3)),
    st.builds(Bind, text, text, st.lists(i16, max_size=4).map(tuple),
              st.lists(st.one_of(st.none(), blob), max_size=4).map(tuple), st.lists(i16, max_size=4).map(tuple)),
    st.builds(Describe, st.sampled_from("SP"), text),
    st.builds(Close, st.sampled_from("SP"), text),
    st.builds(Execute, text, st.integers(0, 2**31 - 1)),
    st.just(Sync()), st.just(Flush()), st.just(Terminate()),
    st.builds(CopyData, blob), st.just(CopyDone()), st.builds(CopyFail, text),
    st.builds(FunctionCall, i32, st.lists(i16, max_size=3).map(tuple),
              st.lists(st.one_of(st.none(), blob), max_size=3).map(tuple), i16),
    st.builds(PasswordMessage, blob),
)
fields = st.dictionaries(st.sampled_from("SVCMDHPWsctdnFLR"), text, min_size=1)
backend_messages = st.one_of(
    st.builds(Authentication, st.sampled_from([0, 3, 5, 10, 11, 12]), blob),
    st.builds(ParameterStatus, text, text),
    st.builds(BackendKeyData, i32, st.binary(min_size=4, max_size=256)),
    st.builds(ReadyForQuery, st.sampled_from("ITE")),
    st.builds(CommandComplete, text),
    st.builds(ErrorResponse, fields),
    st.builds(NoticeResponse, fields),
    st.builds(NotificationResponse, i32, text, text),
    st.builds(NegotiateProtocolVersion, st.integers(0, 5), st.lists(text, max_size=3).map(tuple)),
)


@given(frontend_messages)
def test_frontend_round_trip(msg):
    raw = msg.encode()
    items = FrameScanner(None).feed(raw)
    assert len(items) == 1 and isinstance(items[0], Frame)
    assert items[0].raw == raw
    assert decode_frontend(items[0]) == msg


@given(backend_messages)
def test_backend_round_trip(msg):
    raw = msg.encode()
    (f,) = FrameScanner(None).feed(raw)
    assert isinstance(f, Frame)
    assert decode_backend(f) == msg


@settings(max_examples=200)
@given(st.lists(frontend_messages, min_size=1, max_size=12), st.data())
def test_scanner_streaming_split_preserves_bytes_and_frames(msgs, data):
    """Whatever the chunking, the scanner returns exactly the input bytes, in order, and the
    decoded frames are exactly the messages of the decoded types."""
    stream = b"".join(m.encode() for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decode = data.draw(st.sets(st.sampled_from(sorted(FRONTEND_TYPES))))
    scanner = FrameScanner(decode, valid=FRONTEND_TYPES | {ord("p")})
    out = bytearray()
    frames = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        for item in scanner.feed(stream[prev:cut]):
            if isinstance(item, Frame):
                frames.append(item)
                out += item.raw
            else:
                out += item
        prev = cut
    assert bytes(out) == stream
    assert scanner.at_boundary
    expected = [m for m in msgs if m.type[0] in decode]
    assert [decode_frontend(f) for f in frames] == expected


def test_large_passthrough_frame_is_streamed_not_buffered():
    body = b"x" * 1_000_000
    raw = frame(b"D", body)
    scanner = FrameScanner(b"Z")
    first = scanner.feed(raw[:1000])
    assert first == [raw[:1000]]  # forwarded at once, not held until complete
    assert not scanner.at_boundary
    rest = scanner.feed(raw[1000:] + ReadyForQuery("I").encode())
    assert rest[0] == raw[1000:]
    assert isinstance(rest[1], Frame) and decode_backend(rest[1]) == ReadyForQuery("I")
    assert scanner.at_boundary


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"Q\x00\x00\x00\x03", "invalid message length 3"),
        (b"Q\xff\xff\xff\xff", "invalid message length -1"),
        (b"!\x00\x00\x00\x04", "invalid message type '!'"),
        (b"\x01\x00\x00\x00\x04", "invalid message type 0x01"),
        (b"Q" + struct.pack("!i", 2**20 + 5), "over the limit"),
    ],
)
def test_malformed_frames_raise(raw, match):
    scanner = FrameScanner(None, valid=FRONTEND_TYPES, max_decoded=2**20)
    with pytest.raises(ProtocolViolation, match=match):
        scanner.feed(raw)


def test_oversized_passthrough_frame_raises():
    scanner = FrameScanner(b"Z")
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        scanner.feed(b"D" + struct.pack("!i", 0x40000000))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (frame(b"Q", b"no terminator"), "unterminated string"),
        (frame(b"E", b"portal"), "unterminated string"),
        (frame(b"E", b"portal\0\0\0"), "truncated"),
        (frame(b"S", b"x"), "trailing"),
        (frame(b"B", b"\0\0\xff\xff"), "negative count"),
        (frame(b"B", b"\0\0\0\0\0\x01\0\0\0\x09ab"), "truncated"),
        (frame(b"D", b"X name\0"), "invalid target"),
    ],
)
def test_truncated_or_malformed_bodies_raise(raw, match):
    (f,) = FrameScanner(None).feed(raw)
    with pytest.raises(ProtocolViolation, match=match):
        decode_frontend(f)


def test_unknown_typed_message_raises():
    with pytest.raises(ProtocolViolation):
        decode_backend(Frame(ord("T"), frame(b"T", b"")))


@given(st.dictionaries(text.filter(bool), text, max_size=6), st.sampled_from([3 << 16, (3 << 16) | 2]))
def test_startup_round_trip(params, version):
    msg = StartupMessage(version, params)
    raw = msg.encode()
    assert read_startup_packet(raw[:-1]) is None
    assert read_startup_packet(raw) == (msg, len(raw))


@pytest.mark.parametrize("pkt", [SSLRequest(), GSSENCRequest(), CancelRequest(1234, b"abcd")])
def test_special_startup_packets(pkt):
    raw = pkt.encode()
    assert read_startup_packet(raw + b"tail") == (pkt, len(raw))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (struct.pack("!i", 3), "invalid length"),
        (struct.pack("!i", 100_000), "invalid length"),
        (struct.pack("!ii", 11, 3 << 16) + b"ab\0", "terminator"),
        (struct.pack("!ii", 13, 3 << 16) + b"user\0", "terminator"),
        (struct.pack("!ii", 14, 3 << 16) + b"user\0\0", "without a value"),
        (struct.pack("!ii", 12, 80877103) + b"xxxx", "SSLRequest"),
    ],
)
def test_malformed_startup_packets(raw, match):
    with pytest.raises(ProtocolViolation, match=match):
        read_startup_packet(raw)


def test_error_response_fields():
    e = ErrorResponse.make("28P01", "bad", severity="FATAL", detail="d")
    decoded = decode_backend(FrameScanner(None).feed(e.encode())[0])
    assert isinstance(decoded, ErrorResponse)
    assert (decoded.sqlstate, decoded.message) == ("28P01", "bad")
    assert (decoded.fields["S"], decoded.fields["D"]) == ("FATAL", "d")
