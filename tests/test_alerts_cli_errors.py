"""`shelfscout alerts` failure paths as a real process: unreachable broker, TLS failures, bad files, `| head`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.mqtt import MqttLink
from edge.outbox import Outbox
from edge.payloads import ModelRef, StatusInfo
from edge.topics import Topics
from tests.mosquitto import Mosquitto, free_port
from tests.pki import make_pki
from tests.test_alerts_cli import SHELFSCOUT, _put
from tests.test_mqtt import RUN_AS_ROOT, make_cfg

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _alerts(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHELFSCOUT, "alerts", *args], cwd=ROOT, text=True, capture_output=True, env=ENV,
                          timeout=timeout)


def test_help_names_the_default_broker() -> None:
    r = _alerts("--help")
    assert r.returncode == 0 and "default: mqtt://127.0.0.1:1883" in " ".join(r.stdout.split())


def test_unreachable_broker_with_timeout_exits_1_with_the_reason() -> None:
    port = free_port()  # nothing listens there
    r = _alerts("--broker", f"mqtt://127.0.0.1:{port}", "--timeout", "3")
    assert r.returncode == 1, r
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"shelfscout alerts: could not connect to mqtt://127.0.0.1:{port} within 3 s: "
                    f"127.0.0.1:{port}: Connection refused"), r.stderr
    assert "Traceback" not in r.stderr


def test_without_broker_says_which_one_it_uses() -> None:
    r = _alerts("--timeout", "1")
    assert "no --broker given; using mqtt://127.0.0.1:1883" in r.stderr, r.stderr


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, Path]]]:
    pki = make_pki(tmp_path / "pki")
    b = Mosquitto(tmp_path / "broker", extra=RUN_AS_ROOT)
    b.listener_block = (f"listener {b.port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server}\n"
                        f"keyfile {pki.server_key}\nrequire_certificate true\nallow_anonymous true\n")
    b.start()
    yield b, pki
    b.stop()


def test_tls_failures_and_bad_files_say_why(tls_broker: tuple[Mosquitto, dict[str, Path]], tmp_path: Path) -> None:
    b, pki = tls_broker
    url = f"mqtts://127.0.0.1:{b.port}"
    # the broker's certificate is from a CA we do not trust
    r = _alerts("--broker", url, "--ca-file", str(pki.other_ca), "--cert-file", str(pki.backend),
                "--key-file", str(pki.backend_key), "--timeout", "4")
    assert r.returncode == 1, r
    assert "certificate verify failed" in r.stderr.strip().splitlines()[-1], r.stderr
    # files: one line naming the option and the path, exit 2
    missing = tmp_path / "tls" / "ca.crt"
    r = _alerts("--broker", url, "--ca-file", str(missing))
    assert r.returncode == 2 and r.stderr.strip() == \
        f"shelfscout alerts: error: --ca-file: cannot read {missing}: No such file or directory", r.stderr
    r = _alerts("--broker", url, "--ca-file", str(pki.ca), "--cert-file", str(pki.backend),
                "--key-file", str(pki.client_key))
    assert r.returncode == 2 and "--key-file:" in r.stderr and "is not the private key of --cert-file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _alerts("--broker", url, "--ca-file", str(pki.ca), "--password-file", str(tmp_path / "pw"),
                "--username", "u")
    assert r.returncode == 2 and "--password-file: cannot read" in r.stderr


def test_json_piped_into_a_reader_that_closes_early_ends_quietly(broker: Mosquitto, tmp_path: Path) -> None:
    """`shelfscout alerts --json | head -n 1`: no "Broken pipe", no traceback, exit 0."""
    cfg = make_cfg(tmp_path, broker.url)
    link = MqttLink(cfg, Topics.from_config(cfg), Outbox(cfg.outbox.path),
                    status=lambda: StatusInfo("online", None, ModelRef("shelfgap", 2)))
    link.start()
    try:
        assert link.wait_connected(10)
        proc = subprocess.Popen([*SHELFSCOUT, "alerts", "--broker", broker.url, "--json", "--timeout", "60"],
                                cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()  # the retained status
        assert json.loads(first)["kind"] == "status"
        proc.stdout.close()  # like `head -n 1` exiting
        _put(link, [(i, "opened") for i in range(1, 30)])  # more lines: the next write hits the closed pipe
        rc = proc.wait(60)
        err = proc.stderr.read()
        assert rc == 0, err
        assert "Broken pipe" not in err and "Traceback" not in err and "BrokenPipeError" not in err, err
    finally:
        link.stop()
        link.outbox.close()


@pytest.mark.parametrize("url", ["http://h", "mqtt://", "mqtt://[::1", "mqtt://127.0.0.1:0", "mqtt://h:99999",
                                 "mqtt://cart:s3cret@h:1883"])
def test_a_bad_broker_url_is_refused_the_way_the_config_check_refuses_it(url: str) -> None:
    """One reader of broker URLs (edge.broker_url) for `mqtt.url` and every command's `--broker`: there were two,
    and the commands' let port 0 through to 1883 and said less about an open bracket."""
    from edge import config

    with pytest.raises(config.ConfigError) as e:
        config.parse(f"[mqtt]\nurl = '{url}'\n", env={})
    why = str(e.value).split("mqtt.url: ", 1)[1].splitlines()[0]
    r = _alerts("--broker", url, "--timeout", "3")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith(f"--broker: {why}"), (why, r.stderr)
    assert "s3cret" not in r.stderr


def test_a_broker_address_is_written_back_as_a_url() -> None:
    """Log lines and errors say `connecting to mqtt://[::1]:1884`, not `mqtt://::1:1884`."""
    from edge.broker_url import BrokerAddress

    assert str(BrokerAddress.parse("mqtt://[::1]:1884")) == "mqtt://[::1]:1884"
    assert str(BrokerAddress.parse("mqtts://broker.lan")) == "mqtts://broker.lan:8883"
    assert str(BrokerAddress.parse("mqtt://cart@10.0.0.5")) == "mqtt://10.0.0.5:1883"
