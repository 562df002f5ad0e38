"""The pass-through's de-chunker (``forwarding._Dechunker``): a backend's chunked body, split by
the network anywhere, comes out whole, with what follows the body kept for the next answer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_llm_af.forwarding import BackendBroke, _Dechunker


def chunked(parts: list[bytes], extensions: bool, trailer: bool) -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), b";name=1" if extensions else b"", p) for p in parts)
    return out + (b"0\r\nX-Trailer: 1\r\n\r\n" if trailer else b"0\r\n\r\n")


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(st.binary(min_size=1, max_size=300), max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=50),
    extensions=st.booleans(),
    trailer=st.booleans(),
)
def test_any_split_gives_the_body_and_keeps_what_follows(
    parts: list[bytes], cuts: list[int], extensions: bool, trailer: bool
) -> None:
    wire = chunked(parts, extensions, trailer) + b"HTTP/1.1 200 OK\r\n"  # the next answer's head
    dechunker, body, rest, i, k = _Dechunker(), [], b"", 0, 0
    while i < len(wire) and not dechunker.done:
        step = cuts[k % len(cuts)]
        piece, extra = dechunker.feed(wire[i : i + step])
        body.append(piece)
        i, k = i + step, k + 1
        if dechunker.done:
            rest = extra + wire[i:]
    assert dechunker.done
    assert b"".join(body) == b"".join(parts)
    assert rest == b"HTTP/1.1 200 OK\r\n"


def test_a_token_stream_read_at_once() -> None:
    lines = [b'{"message":{"content":"tok%d "},"done":false}\n' % i for i in range(200)]
    body, rest = _Dechunker().feed(chunked(lines, False, False))
    assert body == b"".join(lines) and rest == b""


@pytest.mark.parametrize("garbage", [b"zz\r\nabc\r\n", b"-5\r\nabcde\r\n"])
def test_a_broken_size_line_is_a_broken_backend(garbage: bytes) -> None:
    with pytest.raises(BackendBroke):
        _Dechunker().feed(garbage)
