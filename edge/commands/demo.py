"""`shelfscout demo`: a cart pass (generated aisle, or your own shelf photos panned) through the model to MQTT, with
the live preview, on a laptop."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole loop on a laptop: generated cart pass -> model -> MQTT alerts",
                       description="Render a cart pass down a generated aisle, run it through the default model and "
                                   "the real device service to an MQTT broker (embedded unless --broker is given), "
                                   "serve the live preview, and print each alert as it is published.")
    p.add_argument("--broker", default=None, help="mqtt://HOST:PORT of a broker to use instead of the embedded one")
    p.add_argument("--out", default="demo-out", help="folder for the video, truth, snapshots and summary")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the cart pass")
    p.add_argument("--seed", type=int, default=7, help="which aisle to generate")
    p.add_argument("--gaps", type=int, default=6, help="empty spots in the aisle")
    p.add_argument("--fast", action="store_true", help="do not pace the video in real time")
    p.add_argument("--loop", action="store_true",
                   help="roll down the aisle again and again until Ctrl-C, keeping the preview up (each gap is "
                        "still alerted once: the cart knows the aisle by its markers)")
    p.add_argument("--preview", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="live preview bind address (port 0 picks a free one)")
    p.add_argument("--no-preview", action="store_true", help="do not serve the live preview")
    p.add_argument("--model", default=None, help="bundle to run instead of the default model")
    p.add_argument("--photos", default=None, metavar="DIR",
                   help="pan across real shelf photos instead of a generated aisle: a folder of images, or a YOLO "
                        "folder (images/ + labels/) whose boxes then score the alerts")
    p.add_argument("--photos-count", type=int, default=5, metavar="N",
                   help="photos per pass with --photos, picked at random by --seed (default 5)")
    p.set_defaults(func=demo)


def _free_bind(bind: str) -> str:
    """The asked-for preview address, or the same host on a free port when that one is taken."""
    import socket

    host, _, port = bind.rpartition(":")
    try:
        with socket.socket() as sock:
            # as the preview server binds: a port whose last connections from an earlier run still linger
            # (TIME_WAIT, up to a minute) is free for it, and for this check
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
    except OSError:
        print(f"port {port} is busy; the preview takes a free port instead", flush=True)
        return f"{host}:0"
    return bind


def _render(out: Path, seconds: float, seed: int, gaps: int) -> Any:
    import numpy as np

    from convert.cartpass import aisle_length_for, make_aisle, render_cart_pass

    fps, speed = 15.0, 10.0
    length = aisle_length_for(seconds, fps, speed)
    aisle = make_aisle(np.random.default_rng(seed), length_px=length, n_gaps=gaps)
    return render_cart_pass(aisle, out / "cart-pass.mp4", fps=fps, speed_px_per_frame=speed, seed=seed)


def _render_photos(out: Path, folder: Path, count: int, seed: int) -> tuple[Any, bool]:
    """A pass panning across `count` of the photos in `folder`; True when they carry labels to score against."""
    from convert.photopan import load_photos, write_pan
    from edge.cli import CliError

    try:
        photos = load_photos(folder, count, seed)
    except (ValueError, OSError) as e:
        raise CliError(f"--photos: {e}") from None
    labelled = (folder / "labels").is_dir()
    print(f"panning across {len(photos)} photos from {folder} -> {out / 'cart-pass.mp4'}"
          f"{'' if labelled else ' (no labels/: alerts are shown, not scored)'}", flush=True)
    try:
        return write_pan(photos, out / "cart-pass.mp4", seed=seed), labelled
    except ValueError as e:
        raise CliError(f"--photos: {e}") from None


def demo(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt

    from convert.passcheck import score_pass
    from edge import config
    from edge.app import Service
    from edge.broker_url import BrokerAddress
    from edge.cli import CliError
    from edge.embedded_broker import EmbeddedBroker
    from edge.instance_lock import InstanceLockError, acquire

    if args.seconds < 5:
        raise CliError("--seconds must be at least 5 (a pass needs the aisle's two ends and its gaps)")
    if args.loop and args.fast:
        raise CliError("--loop runs at the camera's pace; --fast would skip most frames of a looped video")
    if args.photos_count < 1:
        raise CliError("--photos-count must be at least 1")
    if args.broker is not None:
        try:
            BrokerAddress.parse(args.broker)
        except ValueError as e:
            raise CliError(f"--broker: {e}") from None
    args.preview = _free_bind(args.preview)
    out = Path(args.out).resolve()
    try:  # held to the end: a second demo on this folder would re-render the video under this one's feet
        demo_lock = acquire(out / ".demo", "demo folder")
    except InstanceLockError:
        from edge.instance_lock import LOCK_NAME, holder_pid

        pid = holder_pid(out / ".demo" / LOCK_NAME)
        raise CliError(f"another `shelfscout demo`{f' (pid {pid})' if pid else ''} is using {out}; stop it "
                       "(Ctrl-C in its terminal), or give this one --out DIR") from None
    (out / "snapshots").mkdir(exist_ok=True)
    for old in [*(out / "snapshots").glob("*.jpg"), out / "alerts.jpg"]:  # an earlier run's pictures
        old.unlink(missing_ok=True)
    if args.photos is not None:
        cp, labelled = _render_photos(out, Path(args.photos), args.photos_count, args.seed)
    else:
        print(f"rendering a {args.seconds:.0f} s cart pass down a generated aisle -> {out / 'cart-pass.mp4'}",
              flush=True)
        cp, labelled = _render(out, args.seconds, args.seed, args.gaps), True

    embedded = None
    url = args.broker
    if url is None:
        embedded = EmbeddedBroker().start()
        url = embedded.url
        me = sys.argv[0] if Path(sys.argv[0]).name == "shelfscout" else "shelfscout"  # .venv/bin/shelfscout
        print(f"embedded MQTT broker (amqtt) at {url}; to watch it from another terminal: "
              f"{me} alerts --broker {url}", flush=True)

    outbox = out / "outbox.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(outbox) + suffix).unlink(missing_ok=True)
    (out / "places.json").unlink(missing_ok=True)
    text = f"""
[device]
id = "demo-cart"
store = "demo-store"
[camera]
source = "{cp.path}"
realtime = {str(not args.fast).lower()}
loop = {str(args.loop).lower()}
fps = {cp.fps}
[model]
bundle = "{args.model or ''}"
[mqtt]
url = "{url}"
protocol = "{'3.1.1' if embedded is not None else 'auto'}"  # amqtt speaks 3.1.1 only
stats_interval_s = 5.0
[outbox]
path = "{outbox}"
[ota]
enabled = false
[preview]
enabled = {str(not args.no_preview).lower()}
bind = "{args.preview}"
"""
    (out / "config.toml").write_text(text)
    cfg = config.load(out / "config.toml", env={})

    received: list[dict[str, Any]] = []
    lock = threading.Lock()
    addr = BrokerAddress.parse(url)
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"shelfscout-demo-viewer-{time.time_ns()}",
                      protocol=mqtt.MQTTv311)

    def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe("shelfscout/demo-store/demo-cart/#", qos=1)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic.endswith("/alerts"):
            a = json.loads(msg.payload)
            with lock:
                if any(r["event_id"] == a["event_id"] for r in received):
                    return
                received.append(a)
            loc = a["location"]
            where = f"aisle {loc['aisle'] or '?'} at {loc['offset_m']:.2f} m" if loc["offset_m"] is not None else ""
            print(f"  ALERT {a['event']:<7} {a['id']}  {where}  confidence {a['confidence']:.2f}  "
                  f"frame {a['frame']}  snapshot {a['snapshot']['bytes'] if a['snapshot'] else 0} B", flush=True)
        elif "/snapshots/" in msg.topic:
            alert_id = msg.topic.rsplit("/", 1)[1]
            path = out / "snapshots" / f"{alert_id}.jpg"  # a `cleared` event's snapshot does not replace it
            (path.with_name(f"{alert_id}.cleared.jpg") if path.exists() else path).write_bytes(msg.payload)

    sub.on_connect = on_connect
    sub.on_message = on_message
    sub.connect_async(addr.host, addr.port)
    sub.loop_start()

    service = Service(cfg, drain_timeout_s=30.0)
    failed: list[Exception] = []

    def run_service() -> None:
        try:
            service.exit_code = service.run()
        except Exception as e:  # said once, as a one-line error with a non-zero exit, not as a thread's traceback
            failed.append(e)

    runner = threading.Thread(target=run_service, name="service")
    runner.start()
    for _ in range(100):
        if service.preview_url or args.no_preview or not runner.is_alive():
            break
        time.sleep(0.1)
    if service.preview_url:
        print(f"live preview: {service.preview_url}  (open it in a browser)", flush=True)
    print("cart rolling" + (" until Ctrl-C" if args.loop else "") + "; alerts as they are published:", flush=True)
    try:
        while runner.is_alive():
            runner.join(0.5)
    except KeyboardInterrupt:
        service.stop()
        runner.join()
    time.sleep(1.0)
    sub.loop_stop()
    sub.disconnect()
    if embedded is not None:
        embedded.stop()
    if failed:
        demo_lock.release()
        raise CliError(f"the service stopped: {failed[0]}")

    score = score_pass(cp, received)
    summary = {
        "source": str(args.photos) if args.photos is not None else "generated aisle",
        "labelled": labelled,
        "true_gaps": len(cp.gaps),
        "alerts_opened": sum(1 for a in received if a["event"] == "opened"),
        "gaps_alerted": score.found,
        "duplicates": score.duplicates,
        "false_alarms": score.false_alarms,
        "exit_code": service.exit_code,
        "frames": service.parts.pipeline.stats.frames if service.parts.pipeline is not None else 0,
        "frames_read": service.parts.capture.frames if service.parts.capture is not None else 0,
        "pass_frames": cp.frames,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _contact_sheet(out)
    verdict = score.summary() if labelled else (
        f"{summary['alerts_opened']} alerts opened (the photos have no labels/ to score them against)")
    print(f"done: {verdict}; snapshots in {out / 'snapshots'}, contact sheet {out / 'alerts.jpg'}")
    if service.preview_url and not args.loop:
        print("the preview closed with the pass; `shelfscout demo --loop` keeps it up until Ctrl-C")
    demo_lock.release()
    return int(service.exit_code)


def _contact_sheet(out: Path) -> None:
    """All alert snapshots of the run in one JPEG grid, each tile captioned with its alert (and `cleared` for a
    cleared event's picture), with a gap between tiles so that neighbouring views do not read as one panorama."""
    import cv2
    import numpy as np

    tiles = []
    for p in sorted((out / "snapshots").glob("*.jpg")):
        img = cv2.imread(str(p))
        if img is None:
            continue
        tile = cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA)
        alert_id = p.name.split(".", 1)[0]
        caption = f"alert {alert_id.rsplit('-', 1)[-1]}" + (": cleared" if p.name.endswith(".cleared.jpg") else "")
        band = np.full((22, 320, 3), 32, np.uint8)
        cv2.putText(band, caption, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(cv2.copyMakeBorder(np.vstack([band, tile]), 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=(255,) * 3))
    if not tiles:
        return
    cols = min(3, len(tiles))
    while len(tiles) % cols:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    cv2.imwrite(str(out / "alerts.jpg"), np.vstack(rows))
