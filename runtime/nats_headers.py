"""NATS message headers parsed without Python's email parser.

nats-py parses the headers of every message it receives with `email.parser.BytesParser`, unless
the optional package `fast_mail_parser` is importable, in which case it calls
`parse_email(raw).headers` (nats/aio/client.py, `_process_headers`). The email parser costs about
21 us per header block on these machines, and every message of the saga carries headers (a
request's Authorization, an event's Nats-Msg-Id, a reply's content type): under orders, one
process running every set spent 7.6% of its CPU there (py-spy). `fast_mail_parser` 0.10, the one
on PyPI, returns each header's values as a list, which nats-py 2.14 passes on as the value, so
it cannot stand in. `install` puts a parser of the shape nats-py expects in its place: about
1-2 us a block, the same result as the email parser for what NATS sends (`Name: value` lines,
the last of a repeated name winning, folded lines kept, parsing stopping at a line that is not
a header), and values decoded as UTF-8 where the email parser made nats-py drop every header of
a message with one non-ASCII value.
"""

import nats.aio.client

_NOT_IN_NAMES = frozenset(b" \t")


class Parsed:
    __slots__ = ("headers",)

    def __init__(self, headers: dict[str, str]):
        self.headers = headers


def parse_headers(raw: bytes) -> Parsed:
    """`Name: value` lines up to the first blank line, as nats-py's optional parser returns."""
    headers: dict[str, str] = {}
    name = None
    for line in raw.split(b"\r\n"):
        if not line:
            break
        if line[0] in _NOT_IN_NAMES:  # a folded line continues the previous header
            if name is None:
                break
            headers[name] += "\r\n" + line.decode("utf-8", "surrogateescape")
            continue
        key, colon, value = line.partition(b":")
        if not colon or not key or not key.isascii() or _NOT_IN_NAMES.intersection(key):
            break  # not a header line: the email parser takes the rest for a body
        name = key.decode("ascii")
        headers[name] = value.decode("utf-8", "surrogateescape")
    return Parsed({k: v.strip() for k, v in headers.items()})


def install() -> None:
    """Makes nats-py parse headers with `parse_headers` in this process."""
    nats.aio.client.parse_email = parse_headers
