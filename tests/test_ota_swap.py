"""A hot swap under load: the built-in model runs frames in a loop while the updater installs v2 of it; the swap
lands between two frames. Prints the frames lost (intervals stretched beyond the loop's own rate) during the update."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, load_public_keys, read_bundle, write_bundle
from tests.test_ota_support import Device, tiny_models


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest) -> dict[str, bytes]:
    return tiny_models(request.config)


@pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="the built-in model bundle has not been built")
def test_hot_swap_between_frames_with_the_builtin_model(tmp_path: Path, models: dict[str, bytes]) -> None:
    from convert.synth import make_shelf_image
    from edge.detector import Detector
    from edge.pipeline import ModelSlot

    dev = Device(tmp_path, models)
    base = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))
    files = {k: v for k, v in base.members.items() if k not in ("manifest.json", "manifest.sig")}
    bundles = {}
    for v in (1, 2):
        p = dev.pub_dir / f"default-v{v}.bundle"
        write_bundle(p, dataclasses.replace(base.manifest, version=v), files, dev.key)
        bundles[v] = p
    up0 = dev.fast_updater()
    assert up0.apply_release(dev.release(bundles[1])).state == "probation"
    while up0.in_probation:
        up0.observe_frame(1.0, True)

    keys = load_public_keys([dev.keys_dir])
    v1 = read_bundle(dev.models_dir / dev.current(), keys)
    slot = ModelSlot(Detector(v1, threads=1), v1)
    swap_requested: list[float] = []

    def swap(path: Path) -> None:
        b = read_bundle(path, keys)
        slot.request_swap(Detector(b, threads=1), b)  # loaded on the updater's thread, not the frame loop's
        swap_requested.append(time.monotonic())

    from edge.ota.updater import Updater

    up = Updater(dev.cfg, report=dev.reports.append, swap=swap)
    assert up.active_bundle_path().name.startswith("v1-")
    rng = np.random.default_rng(3)
    frames = [make_shelf_image(rng, 640, 480).image for _ in range(4)]
    log: list[tuple[float, float, int]] = []  # start, end, model version
    stop = threading.Event()

    def loop() -> None:
        i = 0
        while not stop.is_set():
            det: Any = slot.current()
            version = slot.info.manifest.version
            t = time.monotonic()
            det.detect(frames[i % len(frames)])
            t1 = time.monotonic()
            log.append((t, t1, version))
            up.observe_frame((t1 - t) * 1e3, bool(np.isfinite(det.outputs()["heatmap"]).all()))
            i += 1

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    time.sleep(1.0)
    t_pub = time.monotonic()
    out = up.apply_release(dev.release(bundles[2]))
    assert out.state == "probation", out
    deadline = time.monotonic() + 60
    while up.in_probation and time.monotonic() < deadline:
        time.sleep(0.01)
    t_active = time.monotonic()
    time.sleep(0.3)
    stop.set()
    th.join(10)

    assert dev.states()[-1] == "active" and dev.current().startswith("v2-")
    versions = [v for _, _, v in log]
    k = versions.index(2)
    assert versions[:k] == [1] * k and set(versions[k:]) == {2}  # one switch, between two frames
    assert log[k][0] >= swap_requested[0] and log[k - 1][0] <= swap_requested[0]
    before = np.diff([e for _, e, _ in log if e < t_pub])
    median = float(np.median(before))
    window = [e for _, e, _ in log if t_pub <= e <= t_active]
    gaps = np.diff([e for _, e, _ in log if t_pub - median <= e <= t_active + median])
    lost = int(sum(max(0, round(g / median) - 1) for g in gaps))
    swap_gap = log[k][1] - log[k - 1][1]
    print(f"\nhot swap under load: {len(window)} frames ran during the update ({t_active - t_pub:.2f} s incl. "
          f"smoke-test child and {dev.cfg.ota.probation_frames}-frame probation); frame interval median "
          f"{median * 1e3:.1f} ms, at the swap {swap_gap * 1e3:.1f} ms; frames lost vs the loop's own rate: {lost} "
          f"(the CPU is shared with the smoke-test child); frames lost at the swap itself: "
          f"{max(0, round(swap_gap / median) - 1)}")
