"""The one reader of broker URLs (`mqtt.url`, a command's `--broker`): host, port, TLS and user, or why not."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, from `mqtt.url`: `mqtt://host[:1883]` or `mqtts://host[:8883]` (TLS)."""

    host: str
    port: int
    tls: bool
    username: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """The address, or ValueError saying what is wrong with `url` (any password in it redacted): callers put
        the config key or the option's name in front."""
        shown = repr(redact_url(url))
        scheme, sep, _ = url.partition("://")
        if not sep or scheme.lower() not in PLAIN_SCHEMES + TLS_SCHEMES:
            raise ValueError(f"{shown} must start with mqtt:// or mqtts://")
        try:
            parts = urlsplit(url)
            host, password = parts.hostname, parts.password
        except ValueError:  # a bracket left open
            raise ValueError(f"{shown}: not a URL") from None
        if not host:
            raise ValueError(f"{shown} names no host")
        tls = scheme.lower() in TLS_SCHEMES
        try:
            port = parts.port  # urlsplit checks the port only when asked, and lets 0 through
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(f"{shown}: the port must be a number from 1 to 65535")
        if password:
            raise ValueError("holds a password: put it in mqtt.password_file (a command's --password-file), not in "
                             "the URL")
        return cls(host, port or (8883 if tls else 1883), tls, unquote(parts.username) if parts.username else None)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address, as it is written in a URL
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def redact_url(url: str) -> str:
    """`url` with any password in it replaced by `***`, for every message and log line, also a URL that is
    otherwise malformed, which is when it is most likely printed: the user information is everything before the
    last `@` of the part after `scheme://` (up to a `?` or `#`), and a password may hold `/` or `@` itself."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at < 0:
        return url
    user, colon, _ = rest[:at].partition(":")
    return f"{head}{sep}{user}{colon}{'***' if colon else ''}{rest[at:]}"
