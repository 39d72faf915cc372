"""The NATS users of deploy/nats.conf on a developer's machine, and who connects as which.

`atlantic up` runs deploy/nats.conf itself, with a password per user generated once and kept in
the data directory (mode 0600); every set then connects as its own user and `atlantic call`
and the loadgen as `client`. A user's replies come under its own inbox prefix, the only inbox
subjects it may subscribe to.
"""

import json
import os
import re
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import nats
import nats.errors

NATS_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nats.conf"
PASSWORDS_FILE = "nats-passwords.json"
CLIENT_USER = "client"
DEFAULT_INBOX_PREFIX = "_INBOX"


def users(config: Path = NATS_CONF) -> list[str]:
    """The users deploy/nats.conf declares, in its order (each has `password: $NATS_<USER>_...`)."""
    return [name.lower() for name in
            re.findall(r"^\s*password:\s*\$NATS_(\w+)_PASSWORD", config.read_text(), re.M)]


def password_variable(user: str) -> str:
    return f"NATS_{user.upper()}_PASSWORD"


def url_user(url: str) -> str | None:
    return urlsplit(url).username


def inbox_prefix(url: str) -> str:
    """`_INBOX.<user>` for a URL with a user in it (the grant deploy/nats.conf gives it), else
    the nats-py default."""
    user = url_user(url)
    return f"{DEFAULT_INBOX_PREFIX}.{user}" if user else DEFAULT_INBOX_PREFIX


def with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=f"{netloc}:{parts.port}" if parts.port else netloc))


def new_password() -> str:
    """160 random bits as a letter and hex digits: safe in a URL, and read by nats-server as a
    string (it parses a variable's value as a config value: one starting with a digit is taken
    for a number, and the config refused)."""
    return "p" + secrets.token_hex(20)


class Passwords:
    """A password per NATS user, in a JSON file only its owner may read."""

    def __init__(self, path: Path, by_user: dict[str, str]):
        self.path, self.by_user = path, by_user

    @classmethod
    def path_in(cls, data_dir: str | Path) -> Path:
        return Path(data_dir) / PASSWORDS_FILE

    @classmethod
    def read(cls, data_dir: str | Path) -> "Passwords | None":
        path = cls.path_in(data_dir)
        try:
            return cls(path, json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    @classmethod
    def ensure(cls, data_dir: str | Path, config: Path = NATS_CONF) -> "Passwords":
        """The passwords kept in data_dir, with one generated for any user that lacks one."""
        existing = cls.read(data_dir)
        by_user = dict(existing.by_user) if existing else {}
        missing = [user for user in users(config) if user not in by_user]
        passwords = cls(cls.path_in(data_dir), by_user | {
            user: new_password() for user in missing})
        if missing or existing is None:
            passwords.write()
        return passwords

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        # Created 0600, never readable by others even for a moment; replaced atomically.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.by_user, f, indent=2)
        os.chmod(temporary, 0o600)  # an older file of that name kept its own mode
        os.replace(temporary, self.path)

    def environment(self) -> dict[str, str]:
        """The variables deploy/nats.conf reads its passwords from."""
        return {password_variable(user): pw for user, pw in self.by_user.items()}

    def url(self, base_url: str, user: str) -> str:
        """base_url (one server, or a comma-separated list) with the user's credentials."""
        return ",".join(with_user(url.strip(), user, self.by_user[user])
                        for url in base_url.split(",") if url.strip())


def url_for(base_url: str, data_dir: str | Path, user: str) -> str:
    """The URL `user` connects with: base_url itself when it names a user already (a deployment
    sets each one's), else with the password `atlantic up` generated, else anonymous."""
    if url_user(base_url):
        return base_url
    passwords = Passwords.read(data_dir)
    if passwords is None or user not in passwords.by_user:
        return base_url
    return passwords.url(base_url, user)


async def connect(servers: str | list[str], **options) -> nats.NATS:
    """nats.connect to one server or a list (comma-separated, as ATLANTIC_NATS_URL), with the
    inbox prefix the (first) URL's user is allowed to subscribe to."""
    if isinstance(servers, str):
        servers = [url.strip() for url in servers.split(",") if url.strip()]
    return await nats.connect(servers, inbox_prefix=inbox_prefix(servers[0]), **options)


PROBE_SUBJECT = "atlantic.events.security.anonymous_probe"


async def anonymous_may_publish_events(url: str) -> bool:
    """Whether a client with no credentials may publish under atlantic.events.> at url.

    The probe carries a Nats-Expected-Stream header naming no stream, so JetStream refuses to
    store it: a reply of any kind (that refusal, or "no responders") means the server let the
    publish through; a permissions violation means it did not."""
    parts = urlsplit(url)
    anonymous = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{parts.port or 4222}"))
    violations: list[str] = []

    async def on_error(error: Exception) -> None:
        violations.append(str(error))

    try:
        nc = await nats.connect(anonymous, connect_timeout=2, allow_reconnect=False,
                                error_cb=on_error)
    except (OSError, TimeoutError, nats.errors.Error):
        return False  # anonymous clients are refused outright
    try:
        await nc.request(PROBE_SUBJECT, b"{}", timeout=2,
                         headers={"Nats-Expected-Stream": "no-such-stream"})
    except (nats.errors.NoRespondersError, TimeoutError):
        pass  # no stream, or a denied publish: the violation has been reported by now
    finally:
        await nc.close()
    return not any("permissions violation" in v.lower() for v in violations)
