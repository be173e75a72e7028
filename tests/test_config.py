"""Config loading: a bad file gets one line that names the key; env overrides; defaults."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge import config
from edge.config import ConfigError

MINIMAL = """
[device]
id = "cart-07"
store = "s042"

[camera]
source = "aisle7.mp4"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"""


def test_minimal_config_resolves_relative_paths(tmp_path: Path) -> None:
    p = tmp_path / "config.toml"
    p.write_text(MINIMAL)
    cfg = config.load(p, env={})
    assert cfg.device.id == "cart-07" and cfg.device.store == "s042"
    assert cfg.camera.source == str(tmp_path / "aisle7.mp4")
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883"
    assert cfg.model.bundle == ""  # the bundled default model


def test_environment_overrides_the_file() -> None:
    cfg = config.parse(MINIMAL, env={"SHELFSCOUT_MQTT__URL": "mqtts://broker:8883", "SHELFSCOUT_MODEL__THREADS": "4",
                                     "SHELFSCOUT_CAMERA__REALTIME": "true"})
    assert cfg.mqtt.url == "mqtts://broker:8883"
    assert cfg.model.threads == 4
    assert cfg.camera.realtime is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[camera]\nsourec = 'x'\n", "camera.sourec: unknown key (did you mean 'camera.source'?)"),
        ("[mqtt]\nurl = 1883\n", "mqtt.url: expected a string, got integer 1883"),
        ("[model]\nthreads = 'two'\n", "model.threads: expected an integer, got string 'two'"),
        ("[mqtt]\nurl = 'http://x'\n", "mqtt.url: 'http://x' must start with mqtt:// or mqtts://"),
        ("[tracking]\nconfirm_frames = 9\n", "tracking.confirm_frames: must be between 1 and tracking.window_frames"),
        ("[device]\nid = 'a/b'\n", "device.id: 'a/b' must not contain"),
        ("[cameras]\nsource = 'x'\n", "cameras: unknown key (did you mean 'camera'?)"),
        ("camera = 3\n", "camera: expected a table [camera], got integer"),
        # values `run` refused only once it built the part (a traceback), or took and then misbehaved with
        ("[tracking]\nclear_frames = 0\n", "tracking.clear_frames: must be at least 1"),
        ("[tracking]\nlost_frames = 0\n", "tracking.lost_frames: must be at least 1"),
        ("[tracking]\nmeters_per_pixel = 0.0\n", "tracking.meters_per_pixel: must be positive"),
        ("[tracking]\nplace_radius_m = nan\n", "tracking.place_radius_m: must be positive"),
        ("[mqtt]\nsnapshot_max_px = 8\n", "mqtt.snapshot_max_px: must be from 16 to 2560"),
        ("[mqtt]\nsnapshot_max_px = 4056\n", "mqtt.snapshot_max_px: must be from 16 to 2560"),  # a Pi HQ frame
        ("[mqtt]\nreconnect_min_s = 0.0\n", "mqtt.reconnect_min_s: must be positive"),
        ("[camera]\nreopen_min_s = 0.0\n", "camera.reopen_min_s: must be above 0 and at most"),
        ("[camera]\nstall_s = -1.0\n", "camera.stall_s: must be positive"),
        ("[camera]\nwidth = 100000\n", "camera.width: must be from 1 to 4096 (pixels)"),
        ("[camera]\nheight = 0\n", "camera.height: must be from 1 to 4096 (pixels)"),
        ("[ota]\npoll_interval_s = 0.0\n", "ota.poll_interval_s: must be at least 1"),
        ("[ota]\nprobation_frames = -1\n", "ota.probation_frames: must be 0 (no probation) or more"),
        ("[preview]\nmax_fps = 0.0\n", "preview.max_fps: must be positive"),
        ("id = 'cart-07'\n", "id: unknown key (it belongs in a table: device.id, under [device])"),
        # a release topic the cart could not subscribe to, or one it would fill in with a KeyError at start-up
        ("[ota]\nrelease_topics = ['{prefix}/{aisle}/release']\n", "ota.release_topics: '{prefix}/{aisle}/release' "
         "must be a topic with no wildcards, using only {prefix}, {store} and {device}"),
        ("[ota]\nrelease_topics = ['{prefix}/+/model/release']\n", "ota.release_topics: '{prefix}/+/model/release'"),
        ("[ota]\nrelease_topics = ['{prefix.x}/model/release']\n", "ota.release_topics: '{prefix.x}/model/release'"),
    ],
)
def test_bad_config_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(text, env={})
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nid = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad, env={})


def test_password_from_file_or_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = config.parse(f"[mqtt]\npassword_file = '{tmp_path / 'pw'}'\n", env={})
    assert config.read_password(cfg.mqtt, env={}) == "s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("fromsystemd")
    assert config.read_password(config.Config().mqtt, env={"CREDENTIALS_DIRECTORY": str(creds)}) == "fromsystemd"
    with pytest.raises(ConfigError, match="mqtt.password_file: cannot read"):
        config.read_password(config.parse("[mqtt]\npassword_file = '/nonexistent/pw'\n", env={}).mqtt, env={})
    # outside systemd (`config check --live`, a run by hand) the installer's file is read as systemd would: the
    # check refused a right password that the service then logged in with
    installed = tmp_path / "etc-credentials"
    assert config.read_password(config.Config().mqtt, env={}, installed=installed) is None
    installed.mkdir()
    (installed / "mqtt-password").write_text("installed\n")
    assert config.read_password(config.Config().mqtt, env={}, installed=installed) == "installed"
    assert config.read_password(config.Config().mqtt, env={"CREDENTIALS_DIRECTORY": str(creds)},
                                installed=installed) == "fromsystemd"


def test_config_check_cli_prints_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[mqtt]\nurll = 'mqtt://x'\n")
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "shelfscout config: error: mqtt.urll: unknown key (did you mean 'mqtt.url'?)"
    p.write_text(MINIMAL)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2  # the video it names is not there, which `run` would stop at
    assert "camera.source: no such video file or image folder: " in r.stderr, r.stderr
    (tmp_path / "aisle7.mp4").write_bytes(b"")  # there now (config check does not decode it; --live does)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_every_error_is_reported_and_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError) as e:
        config.parse("[mqtt]\nurll = 'x'\n[camera]\nfps = 'fast'\n", env={"SHELFSCOUT_CAMRA__FPS": "3"})
    assert e.value.errors == [
        "mqtt.urll: unknown key (did you mean 'mqtt.url'?)",
        "camera.fps: expected a number, got string 'fast'",
        "SHELFSCOUT_CAMRA__FPS (environment): camra: unknown key (did you mean 'camera'?)",
    ]
    assert str(e.value).endswith("(and 2 more)")
    with pytest.raises(ConfigError, match="preview.bind: '0.0.0.0:99999' must be HOST:PORT"):
        config.parse("[preview]\nbind = '0.0.0.0:99999'\n", env={})


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3), (8, 4)])
def test_default_threads_leave_a_core_for_the_pipeline_stages(
    monkeypatch: pytest.MonkeyPatch, cores: int, threads: int
) -> None:
    from edge.config import ModelConfig, default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_threads() == threads
    assert ModelConfig().threads == threads
    assert config.parse("[model]\nbundle = \"x\"\n", env={}).model.threads == threads  # no threads key: default


def test_type_errors_and_value_errors_are_reported_together() -> None:
    """One round of fixes, not two: a file with a wrong type and wrong values lists all of them."""
    text = ("[device]\nid = 'cart/07'\nstore = ''\n[camera]\nsourec = 'x'\nfps = 'fast'\n"
            "[mqtt]\nurl = 'http://broker'\n[tracking]\nconfirm_frames = 0\n[preview]\nbind = 'nowhere'\n")
    with pytest.raises(ConfigError) as e:
        config.parse(text, env={})
    keys = [line.split(":", 1)[0] for line in e.value.errors]
    assert keys == ["camera.sourec", "camera.fps", "device.id", "device.store", "mqtt.url",
                    "tracking.confirm_frames", "preview.bind"]


@pytest.mark.parametrize("url, says", [("mqtt://", "names no host"), ("mqtt://host:99999", "port must be"),
                                       ("mqtts://:8883", "names no host")])
def test_a_broker_url_without_a_host_or_with_an_impossible_port_is_refused(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"mqtt.url: '{re.escape(url)}'.*{says}"):
        config.parse(f"[mqtt]\nurl = '{url}'\n", env={})


@pytest.mark.parametrize("key, value, says", [
    ("url", "mqtt://cart:s3cret@127.0.0.1:1883", "mqtt.url: holds a password: put it in mqtt.password_file"),
    ("url", "mqtt://[::1", "mqtt.url: 'mqtt://[::1': not a URL"),
    ("url", "mqtt://127.0.0.1:0", "mqtt.url: 'mqtt://127.0.0.1:0': the port must be a number from 1 to 65535"),
    ("topic_prefix", "a/+", "mqtt.topic_prefix: 'a/+' must be non-empty, without '+', '#'"),
    ("topic_prefix", "", "mqtt.topic_prefix: '' must be non-empty"),
    ("topic_prefix", "/x", "mqtt.topic_prefix: '/x' must be non-empty, without '+', '#' or a slash at either end"),
])
def test_what_the_service_would_refuse_at_start_is_a_config_error_naming_the_key(
        tmp_path: Path, key: str, value: str, says: str) -> None:
    """These passed `config check` (or crashed it: the open bracket) and then stopped `run` with a traceback at
    start-up, which systemd restarted until it gave up: the contract audit's defect 2."""
    with pytest.raises(ConfigError) as e:
        config.parse(f"[mqtt]\n{key} = '{value}'\n", env={})
    assert says in str(e.value) and "s3cret" not in str(e.value)
    p = tmp_path / "c.toml"
    line = f"{key} = '{value}'"
    p.write_text(MINIMAL.replace('url = "mqtt://127.0.0.1:1883"', line) if key == "url"
                 else MINIMAL.replace("[mqtt]", f"[mqtt]\n{line}"))
    r = subprocess.run([sys.executable, "-m", "edge.cli", "run", "-c", str(p)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("shelfscout run: error: "), r.stderr[-2000:]


def test_tls_files_with_a_plain_broker_url_are_refused_naming_each_key() -> None:
    """An installer who adds a CA and a client certificate but leaves mqtt:// would connect in the clear (to a TLS
    port: a puzzling failure; to a plain one: no encryption at all). The config says so at once."""
    tls = "ca_file = 'ca.crt'\ncert_file = 'cart.crt'\nkey_file = 'cart.key'\n"
    with pytest.raises(ConfigError) as e:
        config.parse(MINIMAL.replace('url = "mqtt://127.0.0.1:1883"', "url = 'mqtt://broker:8883'\n" + tls), env={})
    assert [line.split(":", 1)[0] for line in e.value.errors] == ["mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"]
    assert "write mqtts://" in e.value.errors[0]
    cfg = config.parse(MINIMAL.replace('url = "mqtt://127.0.0.1:1883"', "url = 'mqtts://broker:8883'\n" + tls),
                       env={})
    assert cfg.mqtt.ca_file.endswith("ca.crt")


def test_a_store_or_device_named_like_a_release_topic_is_refused() -> None:
    """A cart "fleet/x" or "s042/model" would publish under the fleet's or the store's release topic."""
    for env, key in (({"SHELFSCOUT_DEVICE__STORE": "fleet"}, "device.store"),
                     ({"SHELFSCOUT_DEVICE__ID": "model"}, "device.id")):
        with pytest.raises(ConfigError, match=f"{key}: 'model' is reserved|{key}: 'fleet' is reserved"):
            config.parse(MINIMAL, env=env)


def test_an_environment_override_of_a_text_key_is_text_even_when_it_looks_like_a_number() -> None:
    env = {"SHELFSCOUT_DEVICE__STORE": "42", "SHELFSCOUT_DEVICE__ID": '"007"', "SHELFSCOUT_CAMERA__FPS": "12",
           "SHELFSCOUT_MQTT__URL": "mqtt://10.0.0.5:1883"}
    cfg = config.parse(MINIMAL, env=env)
    assert (cfg.device.store, cfg.device.id, cfg.camera.fps, cfg.mqtt.url) == ("42", "007", 12.0, "mqtt://10.0.0.5:1883")
    with pytest.raises(ConfigError, match="SHELFSCOUT_CAMERA__FPS .*camera.fps: expected a number"):
        config.parse(MINIMAL, env={"SHELFSCOUT_CAMERA__FPS": "fast"})


def test_config_check_also_checks_what_the_file_names_on_this_machine(tmp_path: Path) -> None:
    """The example config names a CA and a bundle that exist only on a cart: `run` would stop at them, so `config
    check` does too, naming each key; `--syntax-only` checks the file alone."""
    example = Path(__file__).resolve().parents[1] / "deploy" / "config.example.toml"

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", *args], capture_output=True,
                              text=True)

    r = check(str(example))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert [line.split(": ")[2] for line in lines] == ["mqtt.ca_file", "model.bundle"]
    assert all("--syntax-only" in line for line in lines)
    r = check("--syntax-only", str(example))
    assert r.returncode == 0 and "ok" in r.stdout
    p = tmp_path / "c.toml"
    (tmp_path / "aisle7.mp4").write_bytes(b"")  # the video MINIMAL names
    p.write_text(MINIMAL + "[model]\nbundle = 'nothing.bundle'\n")
    r = check(str(p))
    assert r.returncode == 2 and "model.bundle: " in r.stderr and "nothing.bundle" in r.stderr
    # DESIGN.md's cart config names the OTA-managed `current` link, which exists only after the first update: `run`
    # starts on the built-in model meanwhile, so `config check` passes it too (on the same folder outside it, not)
    models = tmp_path / "ota-models"
    p.write_text(MINIMAL + f"[model]\nbundle = '{models / 'current'}'\n[ota]\nmodels_dir = '{models}'\n")
    r = check(str(p))
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    p.write_text(MINIMAL + f"[model]\nbundle = '{models / 'current'}'\n[ota]\nmodels_dir = '{tmp_path / 'x'}'\n")
    assert check(str(p)).returncode == 2


def test_config_check_live_reads_a_frame_and_connects_or_says_which_part_failed(tmp_path: Path) -> None:
    """`config check --live` on an installer's config: a real video file as the camera and a real broker that takes
    passwords. Every failing part is named at once (a camera that is not there, a broker that is down, a wrong
    password), and a passing check leaves the broker without any message from us."""
    import shutil

    from tests.mosquitto import Mosquitto, free_port
    from tests.test_sources import write_video

    passwd_tool = shutil.which("mosquitto_passwd")
    if passwd_tool is None:
        pytest.skip("mosquitto_passwd is missing (Debian package `mosquitto`)")
    passwd = tmp_path / "passwd"
    subprocess.run([passwd_tool, "-c", "-b", str(passwd), "cart-07", "right"], check=True, capture_output=True,
                   timeout=30)
    port = free_port()
    b = Mosquitto(tmp_path / "broker", port=port,
                  listener_block=f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n").start()
    video = write_video(tmp_path / "aisle.mp4", 5)
    (tmp_path / "pw").write_text("right\n")
    (tmp_path / "bad").write_text("wrong\n")

    def check(source: str, url: str, password_file: str) -> subprocess.CompletedProcess[str]:
        p = tmp_path / "c.toml"
        p.write_text(f"[device]\nid = 'cart-07'\nstore = 's042'\n[camera]\nsource = '{source}'\n"
                     f"[mqtt]\nurl = '{url}'\nusername = 'cart-07'\npassword_file = '{password_file}'\n")
        return subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", "--live", "--timeout", "5",
                               str(p)], capture_output=True, text=True, timeout=120)

    try:
        watch_log = b.log.read_text()
        r = check(str(video), b.url, str(tmp_path / "pw"))
        assert r.returncode == 0, r.stderr
        assert "a 640x480 frame" in r.stderr and "connected as cart-07" in r.stderr
        assert "camera and broker answered" in r.stdout
        log = b.log.read_text()[len(watch_log):]
        assert "shelfscout-config-check-" in log and "Received PUBLISH" not in log and "SUBSCRIBE" not in log

        r = check("/dev/video9", f"mqtt://127.0.0.1:{free_port()}", str(tmp_path / "pw"))
        assert r.returncode == 2 and r.stdout == ""
        errors = [line for line in r.stderr.splitlines() if "error:" in line]
        assert len(errors) == 2, r.stderr
        assert "camera.source: " in errors[0] and "/dev/video9" in errors[0]
        assert "mqtt.url: cannot connect to" in errors[1] and "refused" in errors[1].lower()

        r = check(str(video), b.url, str(tmp_path / "bad"))
        assert r.returncode == 2 and "a 640x480 frame" in r.stderr
        (error,) = [line for line in r.stderr.splitlines() if "error:" in line]
        assert "refused the connection" in error and "mqtt.username" in error
    finally:
        b.stop()


def test_config_check_names_a_certificate_made_for_another_cart(tmp_path: Path) -> None:
    """The example's `id = "cart-01"` left as it was with cart-07's certificate installed: the broker (shipped ACL,
    the certificate's name as the user) refused every message, status included, while `config check --live` said
    ok. The certificate's name is checked against device.store/device.id now."""
    from edge.commands.config_cmd import machine_problems
    from tests.pki import client_cert, make_pki

    pki = make_pki(tmp_path / "pki")
    (tmp_path / "certs" / "s042").mkdir(parents=True)
    crt, key = client_cert(pki, "s042/cart-07", tmp_path / "certs")
    tls = f"url = 'mqtts://127.0.0.1:8883'\nca_file = '{pki.ca}'\ncert_file = '{crt}'\nkey_file = '{key}'\n"
    right = config.parse(f"[device]\nid = 'cart-07'\nstore = 's042'\n[mqtt]\n{tls}", env={})
    assert not [p for p in machine_problems(right) if p.startswith("mqtt.cert_file")]
    wrong = config.parse(f"[device]\nid = 'cart-01'\nstore = 's042'\n[mqtt]\n{tls}", env={})
    (line,) = [p for p in machine_problems(wrong) if p.startswith("mqtt.cert_file")]
    assert "cart 's042/cart-07'" in line and "cart 's042/cart-01'" in line and "make-certs.sh device s042 cart-01" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="checks what another user may read: needs root, as on a cart")
def test_config_check_as_root_says_which_files_the_service_user_cannot_read(tmp_path: Path) -> None:
    """Root reads every file, so `sudo shelfscout config check` said ok where the service, running as its own
    user, could not read its TLS key. The check now looks at each file's permissions for that user (`nobody` here:
    the test machine has no `shelfscout` user)."""
    import shutil
    import tempfile

    # pytest's own folder is root's only (0700), and the unit hides /tmp from the service: a folder like /etc's
    base = Path(tempfile.mkdtemp(dir="/var/lib", prefix="shelfscout-test-"))
    try:
        _check_service_user_problems(base)
    finally:
        shutil.rmtree(base)


def _check_service_user_problems(base: Path) -> None:
    import grp
    import pwd

    from edge.commands.config_cmd import service_user_problems

    base.chmod(0o755)
    tls = base / "tls"
    tls.mkdir()
    tls.chmod(0o750)
    nogroup = pwd.getpwnam("nobody").pw_gid
    os.chown(tls, 0, nogroup)
    files = {}
    for name in ("ca.crt", "device.crt", "device.key"):
        files[name] = tls / name
        files[name].write_text("x")
        os.chown(files[name], 0, nogroup)
        files[name].chmod(0o640)
    files["device.key"].chmod(0o600)  # root's only
    cfg = config.parse(f"[mqtt]\nurl = 'mqtts://h:8883'\nca_file = '{files['ca.crt']}'\ncert_file = "
                       f"'{files['device.crt']}'\nkey_file = '{files['device.key']}'\n[ota]\nkeys_dir = '{tls}'\n",
                       env={})
    (line,) = service_user_problems(cfg, user="nobody")
    assert line.startswith("mqtt.key_file: the service runs as user 'nobody', which cannot read it")
    assert f"-rw------- root:{grp.getgrgid(nogroup).gr_name}" in line and "chmod 0640" in line
    files["device.key"].chmod(0o640)
    assert service_user_problems(cfg, user="nobody") == []
    tls.chmod(0o700)  # the folder shut: every file in it, and the fix is the folder's
    assert [p.split(":")[0] for p in service_user_problems(cfg, user="nobody")] == [
        "mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"]
    assert all(f"cannot enter {tls}" in p and "copy it under /etc/shelfscout/tls" in p and "chgrp" not in p
               for p in service_user_problems(cfg, user="nobody"))  # not shelfscout's folder: not changed
    tls.chmod(0o750)
    # a link in a shut folder to a readable key: the link's own folder counts (the review found it passed)
    shut = base / "shut"
    shut.mkdir(mode=0o700)
    (shut / "device.key").symlink_to(files["device.key"])
    via = config.parse(f"[mqtt]\nurl = 'mqtts://h:8883'\nkey_file = '{shut / 'device.key'}'\n", env={})
    (line,) = service_user_problems(via, user="nobody")
    assert line.startswith("mqtt.key_file:") and f"cannot enter {shut}" in line
    # where the unit cannot look at all (ProtectHome=yes, PrivateTmp=yes), whatever the permissions
    home = config.parse("[mqtt]\nurl = 'mqtts://h:8883'\nca_file = '/root'\n", env={})
    (line,) = service_user_problems(home, user="nobody")
    assert "cannot see /root at all" in line and "ProtectHome=yes" in line


def test_no_message_or_ok_line_prints_a_password_from_a_url(tmp_path: Path) -> None:
    """A password in a URL was refused only when the rest of the URL was valid: every other URL error printed the
    whole URL, password and all, into the journal and the terminal; `config check` printed the camera's RTSP URL
    with its password on success."""
    for url in ("mqtts://cart:S3cretPW@broker:88830", "mqtts://cart:S3cretPW@:8883", "http://cart:S3cretPW@b:1",
                "mqtt://cart:S3cret/PW@host:1883", "mqtt://cart:S3cret@PW@host:x"):  # a '/' or '@' in it too
        with pytest.raises(ConfigError) as e:
            config.parse(f"[mqtt]\nurl = '{url}'\n", env={})
        assert "S3cret" not in str(e.value) and "PW" not in str(e.value) and "cart:***@" in str(e.value), str(e.value)
    from edge.broker_url import BrokerAddress

    with pytest.raises(ValueError) as e2:
        BrokerAddress.parse("mqtts://cart:S3cretPW@broker:8883x")
    assert "S3cretPW" not in str(e2.value)
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL.replace('source = "aisle7.mp4"', 'source = "rtsp://admin:CamPW@10.0.0.9/stream"'))
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", "--syntax-only", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "rtsp://admin:***@10.0.0.9/stream" in r.stdout and "CamPW" not in r.stdout


def test_config_check_live_says_a_missing_tls_file_once(tmp_path: Path) -> None:
    """The machine check and the broker check both stop at an unreadable TLS file: it was printed twice."""
    from tests.test_sources import write_video

    video = write_video(tmp_path / "aisle.mp4", 3)
    p = tmp_path / "c.toml"
    p.write_text(f"[device]\nid = 'cart-07'\nstore = 's042'\n[camera]\nsource = '{video}'\n[mqtt]\n"
                 f"url = 'mqtts://127.0.0.1:9'\nca_file = '{tmp_path / 'nowhere' / 'ca.crt'}'\n")
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", "--live", "--timeout", "2", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("mqtt.ca_file: cannot read") == 1, r.stderr
