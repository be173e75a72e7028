"""How to reach the MQTT broker safely: the login (the address from `edge.broker_url`, user, password, TLS context
from the configured files, each problem named by its key), and why a connection failed (paho's callbacks do not
say)."""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from edge.broker_url import BrokerAddress
from edge.config import ConfigError, MqttConfig, read_password


@dataclass(frozen=True)
class TlsKeys:
    """How errors name the TLS settings: config keys for the service, option names for a CLI."""

    ca_file: str = "mqtt.ca_file"
    cert_file: str = "mqtt.cert_file"
    key_file: str = "mqtt.key_file"


CLI_TLS_KEYS = TlsKeys("--ca-file", "--cert-file", "--key-file")


def _read_pem(key: str, path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not a PEM file (binary data; convert DER with openssl)") from None
    if "-----BEGIN " not in text:
        raise ConfigError(f"{key}: {path} is not a PEM file (no -----BEGIN line)")
    return text


def _ssl_why(e: ssl.SSLError) -> str:
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(e.args[1] if len(e.args) > 1 else e))


def ssl_reason(e: ssl.SSLError) -> str:
    """A TLS failure in words: `certificate verify failed: <why>` for the broker's certificate, else the reason."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    return e.reason or _ssl_why(e)


def _no_passphrase() -> bytes:
    raise ValueError("the key is encrypted")


def tls_context(ca_file: str = "", cert_file: str = "", key_file: str = "",
                keys: TlsKeys = TlsKeys()) -> ssl.SSLContext:
    """A client TLS context: verify the broker against `ca_file` (or the system CAs), with an optional client cert.

    Every problem with the files (missing, unreadable, not PEM, key not matching the certificate, an encrypted
    key) is a ConfigError naming the setting (`keys`) and the path, never a traceback.
    """
    if (cert_file or key_file) and not (cert_file and key_file):
        raise ConfigError(f"{keys.cert_file} and {keys.key_file} must be given together")
    ca_pem = _read_pem(keys.ca_file, ca_file) if ca_file else None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    except ssl.SSLError as e:
        raise ConfigError(f"{keys.ca_file}: {ca_file} holds no usable CA certificate ({_ssl_why(e)})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file and key_file:
        cert_pem = _read_pem(keys.cert_file, cert_file)
        try:
            x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        except ValueError as e:
            raise ConfigError(f"{keys.cert_file}: {cert_file} holds no valid PEM certificate ({e})") from None
        key_pem = _read_pem(keys.key_file, key_file)
        if "PRIVATE KEY-----" not in key_pem:
            raise ConfigError(f"{keys.key_file}: {key_file} holds no PEM private key")
        try:
            ctx.load_cert_chain(cert_file, key_file, password=_no_passphrase)
        except ValueError:
            raise ConfigError(f"{keys.key_file}: {key_file} is encrypted; the service needs an unencrypted key "
                              "(readable by its user only)") from None
        except ssl.SSLError as e:
            why = _ssl_why(e)
            if "KEY_VALUES_MISMATCH" in why.upper():
                raise ConfigError(f"{keys.key_file}: {key_file} is not the private key of {keys.cert_file} "
                                  f"{cert_file}") from None
            raise ConfigError(f"{keys.cert_file}/{keys.key_file}: cannot load {cert_file} with {key_file}: "
                              f"{why}") from None
        except OSError as e:
            raise ConfigError(f"{keys.cert_file}/{keys.key_file}: cannot read {cert_file} or {key_file}: "
                              f"{e.strerror or e}") from None
    return ctx


def probe(address: BrokerAddress, tls: ssl.SSLContext | None, timeout_s: float = 3.0) -> str:
    """Why connecting to `address` fails, found by repeating the TCP and TLS steps (paho's callbacks do not say)."""
    host, port = address.host, address.port
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"
    with sock:
        if tls is None:
            return f"{host}:{port}: the connection failed after TCP connected"
        try:
            with tls.wrap_socket(sock, server_hostname=host):
                return f"{host}:{port}: the MQTT connection failed after the TLS handshake"
        except ssl.SSLError as e:
            return f"{host}:{port}: TLS handshake failed: {ssl_reason(e)}"
        except OSError as e:
            return f"{host}:{port}: TLS handshake failed: {e.strerror or e}"


@dataclass(frozen=True)
class BrokerLogin:
    """How this cart logs in to its broker, from `[mqtt]`: where, as whom, and over which TLS context (the one
    reading of the config that the service and `config check --live` share)."""

    address: BrokerAddress
    username: str
    password: str | None
    tls: ssl.SSLContext | None

    @classmethod
    def from_config(cls, m: MqttConfig) -> BrokerLogin:
        """ConfigError (or ValueError for the URL) naming the key when a file cannot be used."""
        address = BrokerAddress.parse(m.url)
        tls = tls_context(m.ca_file, m.cert_file, m.key_file) if address.tls else None
        return cls(address, m.username or address.username or "", read_password(m), tls)

    def apply(self, client: Any) -> None:
        """Set the credentials and TLS on a paho client before it connects."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls is not None:
            client.tls_set_context(self.tls)
