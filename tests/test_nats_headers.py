"""Header parsing for nats-py (runtime.nats_headers), without servers: the same headers as the
email parser nats-py falls back on, for what NATS carries."""

from email.parser import BytesParser

import pytest

from runtime.nats_headers import parse_headers

pytestmark = pytest.mark.fast

BLOCKS = [
    b"Authorization: Bearer abc.def\r\nIdempotency-Key: 0f3c\r\n\r\n",
    b"content-type: application/json\r\ncorrelation_id: 6f1c2a8e-1f2b-4c3d-9e8f-0a1b2c3d4e5f\r\n"
    b"\r\n",
    b"Nats-Service-Error: the request is bad: really\r\nNats-Service-Error-Code: 400\r\n\r\n",
    b"Nats-Msg-Id: e1\r\nNats-Msg-Id: e2\r\n\r\n",
    b"A:1\r\nB:   spaced  out   \r\nC:\r\n\r\n",
    b"A: 1\r\n b\r\n\tc\r\nD: 2\r\n\r\n",
    b"A: 1\r\nnot a header\r\nB: 2\r\n\r\n",
    b"content-type: \r\n\r\n",
]


@pytest.mark.parametrize("raw", BLOCKS)
def test_the_same_headers_as_the_email_parser(raw):
    expected = {k.strip(): v.strip() for k, v in BytesParser().parsebytes(raw).items()}

    assert parse_headers(raw).headers == expected


def test_a_non_ascii_value_is_read_as_utf8():
    raw = "Nats-Service-Error: café closed\r\nNats-Service-Error-Code: 404\r\n\r\n".encode()

    assert parse_headers(raw).headers == {"Nats-Service-Error": "café closed",
                                          "Nats-Service-Error-Code": "404"}
