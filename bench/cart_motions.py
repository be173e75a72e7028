"""Alerts on rendered cart passes with the motions a real cart makes: stops, stop-and-go, reversing, camera shake,
shoppers walking past, and a fast push.

For each seed it generates an aisle (convert.cartpass: 2800 px long, 480 px high, 6 gaps; at about 1.5 mm a pixel,
4.2 m of shelf) and renders one short pass per scenario with the same pixels `render_cart_pass` makes (sub-pixel
travel, vertical jitter, motion blur along the travel, sensor noise), but along a trajectory of any shape, with
optional shake and shoppers drawn over the shelf. Each pass is written as an .mp4 (mp4v) and decoded as the service
would, then the int8 default model and a GapTracker run frame by frame on a 15 fps clock. `--labelled` also runs the
tracker on the labelled boxes as detections (a perfect model), which separates tracker faults from model faults.

Scored against each pass's ground truth (convert.passcheck.score_pass), summed over the seeds, per scenario and kind:
gaps alerted / labelled gaps, duplicates (extra alerts for a gap that already had one), false alerts (an alert on no
labelled gap) and wrong clears (a `cleared` event for an alerted gap, not as a duplicate: no gap is restocked in
these passes, so each such spot was still empty). `plain` is the baseline: the same aisle passed at a steady
10 px a frame. The scenarios are those of the session-28 field audit (its motion_audit.py), with its numbers.

    .venv/bin/python bench/cart_motions.py [--seeds 100 101 ...] [--only plain stop ...] [--labelled] [--json FILE]
                                           [--motion-width PX]

A table on stdout, one line per pass on stderr. The defaults (8 seeds) render about 28,000 frames: some 6 min on
2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from convert.cartpass import Aisle, CartPass, FrameTruth, _frame_truth, iter_video_rgb, make_aisle
from convert.passcheck import bench_config, score_pass
from edge.app import load_model
from edge.config import Config
from edge.detector import Detector
from edge.payloads import ModelRef, alert_payload
from edge.topics import Topics
from edge.tracker import GapTracker
from edge.types import Frame, Gap

FW, FH = 640, 480
FPS = 15.0
AISLE_PX = 2800
N_GAPS = 6
BLUR = 0.25  # motion blur, as a share of the travel per frame (as convert.cartpass)
T0 = 1_800_000_000.0  # wall clock of frame 0; frame i is at i / FPS

Shake = tuple[float, float, float]  # dx, dy (aisle px), roll (degrees) added to one frame's view


# ---------------------------------------------------------------------------------------------------------------
# trajectories: the aisle x of the frame's left edge, per frame


@dataclass(frozen=True)
class Go:
    """Travel to aisle x `to` at `v` px a frame (backwards when `to` is behind)."""

    to: float
    v: float


@dataclass(frozen=True)
class Stop:
    frames: int


@dataclass(frozen=True)
class Ramp:
    """Travel to `to` with the speed changing linearly from `v0` to `v1` px a frame."""

    to: float
    v0: float
    v1: float


def constant(x0: float, x1: float, v: float) -> list[float]:
    n = int((x1 - x0) / v) + 1
    return [x0 + k * v for k in range(n)]


def segments(*parts: Go | Stop | Ramp) -> list[float]:
    """A trajectory from aisle x 0 through `parts` in turn."""
    xs = [0.0]
    for p in parts:
        cur = xs[-1]
        if isinstance(p, Go):
            n = max(1, int(round(abs(p.to - cur) / p.v)))
            step = (p.to - cur) / n
            xs += [cur + step * (k + 1) for k in range(n)]
        elif isinstance(p, Stop):
            xs += [cur] * p.frames
        else:
            sgn = 1 if p.to > cur else -1
            d = abs(p.to - cur)
            n = max(1, int(round(2 * d / max(1e-6, p.v0 + p.v1))))  # n * (v0 + v1) / 2 = d
            vs = np.linspace(p.v0, p.v1, n)
            for v in vs * d / vs.sum():
                xs.append(xs[-1] + sgn * float(v))
    return xs


def shake_bursts(n: int, seed: int, bursts: Sequence[tuple[int, int]], amp: float = 12.0,
                 deg: float = 1.5) -> list[Shake]:
    """Per frame shake: a random offset up to `amp` px and roll up to `deg` in each (start, frames) burst."""
    g = np.random.default_rng([seed, 55])
    out: list[Shake] = [(0.0, 0.0, 0.0)] * n
    for s, ln in bursts:
        for k in range(s, min(n, s + ln)):
            out[k] = (float(g.uniform(-amp, amp)), float(g.uniform(-amp, amp)), float(g.uniform(-deg, deg)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# scenarios


@dataclass(frozen=True)
class Walker:
    """A shopper between the camera and the shelf: a body-shaped blob `width` px wide, from frame `start` for
    `frames` frames, its centre moving linearly from frame x `x_from` to `x_to`."""

    start: int
    frames: int
    x_from: float
    x_to: float
    width: int
    colour: tuple[int, int, int]

    def draw(self, k: int, fr: np.ndarray) -> np.ndarray:
        if not self.start <= k < self.start + self.frames:
            return fr
        cx = self.x_from + (self.x_to - self.x_from) * (k - self.start) / max(1, self.frames - 1)
        x0, x1 = int(cx - self.width / 2), int(cx + self.width / 2)
        fr = fr.copy()
        cv2.rectangle(fr, (x0, 60), (x1, FH), self.colour, -1)  # torso and legs
        cv2.circle(fr, (int(cx), 40), int(self.width * 0.28), (200, 160, 130), -1)  # head
        cv2.line(fr, (x0 + 5, 200), (x1 - 5, 200), tuple(int(c * 0.6) for c in self.colour), 6)  # some texture
        return fr


@dataclass
class Scenario:
    name: str
    what: str
    xs: list[float]
    shake: list[Shake] | None = None
    walkers: list[Walker] = field(default_factory=list)


SCENARIOS = {  # name: what it is (the definitions are in scenarios())
    "plain": "the baseline: steady 10 px a frame (0.23 m/s)",
    "stop": "stops 10 s (150 frames) with the middle gap mid-frame, slowing down and speeding up over 60 px",
    "stop60": "as stop, for 60 s (900 frames)",
    "stopgo": "six stops of 20 frames along the pass",
    "reverse": "forward to 65 % of the pass, back to 30 % (about 1.1 m), forward to the end; stops 8 frames at each "
               "turn",
    "shake": "the plain pass with three bursts of 12 jostled frames (up to 12 px and 1.5 degrees)",
    "people": "the plain pass with four shoppers crossing the view in 20-40 frames each",
    "people2": "the plain pass with four shoppers: slow, fast and close to the lens, with the travel, light clothes",
    "stop_people": "the stop pass; a shopper crosses, then another walks in and stands in front of the gap, "
                   "then leaves",
    "speed67": "steady 67 px a frame: 1.5 m/s at 15 fps",
}


def scenarios(aisle: Aisle, seed: int, names: Sequence[str]) -> Iterator[Scenario]:
    """The passes of the audit, for this aisle, in the order of SCENARIOS (only those in `names`)."""
    end = aisle.length_px - FW - 1
    gx = sorted(0.5 * (g.box[0] + g.box[2]) for g in aisle.gaps)
    stop_at = gx[len(gx) // 2] - FW / 2  # the middle gap mid-frame
    plain = constant(0, end, 10)
    n = len(plain)

    def stop(frames: int) -> list[float]:
        return segments(Go(stop_at - 60, 10), Ramp(stop_at, 10, 1), Stop(frames), Ramp(stop_at + 60, 1, 10),
                        Go(end, 10))

    def build(name: str) -> Scenario:
        what = SCENARIOS[name]
        if name == "plain":
            return Scenario(name, what, plain)
        if name == "stop":
            return Scenario(name, what, stop(150))
        if name == "stop60":
            return Scenario(name, what, stop(900))
        if name == "stopgo":
            parts: list[Go | Stop | Ramp] = []
            for k in range(1, 7):
                parts += [Go(end * k / 7, 10), Stop(20)]
            return Scenario(name, what, segments(*parts, Go(end, 10)))
        if name == "reverse":
            return Scenario(name, what, segments(Go(0.65 * end, 10), Stop(8), Go(0.3 * end, 10), Stop(8),
                                                 Go(end, 10)))
        if name == "shake":
            return Scenario(name, what, plain, shake=shake_bursts(n, seed, [(n // 6, 12), (n // 2, 12),
                                                                            (4 * n // 5, 12)]))
        if name == "people":
            return Scenario(name, what, plain, walkers=[
                Walker(n // 8, 20, -150, FW + 150, 180, (40, 40, 60)),
                Walker(n // 3, 30, FW + 150, -150, 200, (150, 30, 30)),
                Walker(n // 2, 20, -150, FW + 150, 220, (20, 20, 20)),
                Walker(3 * n // 4, 40, FW + 150, -150, 160, (60, 90, 140)),
            ])
        if name == "people2":
            return Scenario(name, what, plain, walkers=[
                Walker(10, 60, FW + 150, -150, 170, (90, 60, 40)),  # slow, against the travel
                Walker(70, 12, -200, FW + 200, 260, (30, 30, 30)),  # fast and big (close to the lens)
                Walker(110, 50, -150, FW + 150, 150, (40, 120, 60)),  # with the travel
                Walker(170, 25, FW + 150, -150, 240, (200, 200, 210)),  # light clothes
            ])
        if name == "stop_people":
            xs = stop(150)
            i_stop = next(i for i in range(1, len(xs)) if xs[i] == xs[i - 1])
            return Scenario(name, what, xs, walkers=[
                Walker(i_stop + 10, 40, -150, FW + 150, 200, (30, 30, 40)),
                Walker(i_stop + 60, 60, FW + 150, 200, 220, (120, 40, 40)),  # walks in and stands
                Walker(i_stop + 120, 30, 200, -200, 220, (120, 40, 40)),  # and leaves
            ])
        if name == "speed67":
            return Scenario(name, what, constant(0, end, 67))
        raise ValueError(f"unknown scenario {name!r}")

    for name in SCENARIOS:
        if name in names:
            yield build(name)


# ---------------------------------------------------------------------------------------------------------------
# render, run, score


def render(aisle: Aisle, sc: Scenario, out: Path, seed: int) -> CartPass:
    """Write the pass as an .mp4 with the pixels of convert.cartpass, the view following `sc`; returns its truth."""
    n = len(sc.xs)
    g = np.random.default_rng([seed, 11])  # vertical jitter, as convert.cartpass
    phase = g.uniform(0, 2 * np.pi)
    walk = np.cumsum(g.normal(0, 0.25, n))
    walk -= np.linspace(0, walk[-1], n)
    ys = np.clip(0.8 * np.sin(phase + np.arange(n) * 0.35) + 0.5 * walk, -2.0, 2.0)
    scale = FH / aisle.height_px
    max_x = aisle.length_px - FW / scale
    noise_rng = np.random.default_rng([seed, 13])
    truth: list[FrameTruth] = []
    vw = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (FW, FH))
    if not vw.isOpened():
        raise OSError(f"cannot open a video writer for {out}")
    try:
        for k in range(n):
            dx, dy, deg = sc.shake[k] if sc.shake is not None else (0.0, 0.0, 0.0)
            x, y = min(max(sc.xs[k], 0.0), max_x) + dx, float(ys[k]) + dy
            truth.append(_frame_truth(aisle, k, x, y, scale, (FW, FH)))
            m = np.array([[scale, 0.0, -scale * x], [0.0, scale, -scale * y]], np.float64)
            if deg:
                r = cv2.getRotationMatrix2D((FW / 2, FH / 2), deg, 1.0)
                m = (np.vstack([r, [0, 0, 1]]) @ np.vstack([m, [0, 0, 1]]))[:2]
            fr = cv2.warpAffine(aisle.image, m, (FW, FH), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            v = abs(sc.xs[k] - sc.xs[k - 1]) if k else abs(sc.xs[1] - sc.xs[0]) if n > 1 else 0.0
            if sc.shake is not None and k:
                v = max(v, abs(sc.shake[k][0] - sc.shake[k - 1][0]))
            blur = max(1, int(round(v * scale * BLUR)))
            if blur > 1:
                fr = cv2.blur(fr, (blur, 1))
            noise = noise_rng.standard_normal((FH, FW), dtype=np.float32) * np.float32(noise_rng.uniform(1.5, 3.5))
            fr = np.clip(cv2.add(fr.astype(np.float32), cv2.merge([noise, noise, noise])), 0, 255).astype(np.uint8)
            for walker in sc.walkers:
                fr = walker.draw(k, fr)
            vw.write(cv2.cvtColor(fr, cv2.COLOR_RGB2BGR))
    finally:
        vw.release()
    return CartPass(out, out.with_suffix(".json"), n, FPS, (FW, FH), 0.0, scale, list(aisle.gaps),
                    list(aisle.markers), truth)


@dataclass
class Tally:
    """Alert scores of one scenario and kind, summed over `seeds`."""

    scenario: str
    kind: str  # "model" or "labelled"
    seeds: list[int] = field(default_factory=list)
    frames: int = 0
    gaps: int = 0
    alerted: int = 0
    duplicates: int = 0  # extra alerts for a gap already alerted
    false_alerts: int = 0
    wrong_clears: int = 0  # alerted gaps cleared (not as a duplicate) while still empty
    missed: list[str] = field(default_factory=list)  # "seed:gap id"

    def add(self, other: Tally) -> None:
        self.seeds += other.seeds
        self.frames += other.frames
        self.gaps += other.gaps
        self.alerted += other.alerted
        self.duplicates += other.duplicates
        self.false_alerts += other.false_alerts
        self.wrong_clears += other.wrong_clears
        self.missed += other.missed


def score(cp: CartPass, alerts: Sequence[dict[str, object]], scenario: str, kind: str, seed: int) -> Tally:
    s = score_pass(cp, alerts)
    on_gaps = {a for ids in s.matched.values() for a in ids}
    wrong = {a["id"] for a in alerts if a["event"] == "cleared" and a["id"] in on_gaps and not a.get("duplicate_of")}
    return Tally(scenario, kind, [seed], cp.frames, len(s.true_gaps), len(s.found),
                 sum(len(ids) - 1 for ids in s.matched.values()), len(s.false_alarms), len(wrong),
                 [f"{seed}:{g}" for g in sorted(set(s.true_gaps) - set(s.found))])


def run_pass(det: Detector, cfg: Config, aisle: Aisle, sc: Scenario, seed: int, work: Path,
             labelled: bool) -> list[Tally]:
    """Render, decode and track one pass: the model's detections and, with `labelled`, the labelled boxes, each
    through its own GapTracker on the same decoded frames."""
    cp = render(aisle, sc, work / f"{sc.name}-{seed}.mp4", seed)
    kinds: dict[str, Callable[[int, np.ndarray], list[Gap]]] = {"model": lambda i, im: detect(det, im)}
    if labelled:
        kinds["labelled"] = lambda i, im: [Gap(*g.box, 1.0) for g in cp.truth[i].gaps]
    trackers = {kind: GapTracker(cfg.tracking, "bench", None) for kind in kinds}
    alerts: dict[str, list[dict[str, object]]] = {kind: [] for kind in kinds}
    topics = Topics("shelfscout", "bench", "bench")
    i = -1
    for i, im in enumerate(iter_video_rgb(cp.path)):
        for kind, found in kinds.items():
            for ev in trackers[kind].update(Frame(im, i, i / FPS, T0 + i / FPS), found(i, im)):
                alerts[kind].append(alert_payload(ev, topics, ModelRef("m", 0)))
    if i + 1 != cp.frames:
        raise RuntimeError(f"{cp.path} decoded to {i + 1} frames, {cp.frames} written")
    cp.path.unlink()
    return [score(cp, alerts[kind], sc.name, kind, seed) for kind in kinds]


def detect(det: Detector, im: np.ndarray) -> list[Gap]:
    det.preprocess(im)
    det.invoke()
    return det.decode(im.shape[1], im.shape[0])


def table(rows: Sequence[Tally]) -> str:
    head = f"{'scenario':<12} {'kind':<9} {'passes':>6} {'frames':>7} {'alerted':>9} {'dups':>5} {'false':>6} " \
           f"{'wrong clears':>12}"
    lines = [head, "-" * len(head)]
    for t in rows:
        tag = "  (baseline)" if t.scenario == "plain" else ""
        lines.append(f"{t.scenario:<12} {t.kind:<9} {len(t.seeds):>6} {t.frames:>7} {f'{t.alerted}/{t.gaps}':>9} "
                     f"{t.duplicates:>5} {t.false_alerts:>6} {t.wrong_clears:>12}{tag}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(100, 108)), help="aisle seeds (100..107)")
    ap.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS), metavar="SCENARIO",
                    help="these scenarios only: "  # argparse formats help with %: the descriptions' own are %%
                    + "; ".join(f"{k}: {v}" for k, v in SCENARIOS.items()).replace("%", "%%"))
    ap.add_argument("--labelled", action="store_true", help="also track the labelled boxes as detections")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="write a JSON line per pass and per table row here")
    ap.add_argument("--motion-width", type=int, default=None, metavar="PX",
                    help="tracking.motion_width: the width the frame-to-frame shift is measured at (default: the "
                         "config's, 160)")
    args = ap.parse_args()
    cfg = bench_config(None)
    if args.motion_width is not None:
        cfg = cfg.replace(tracking=replace(cfg.tracking, motion_width=args.motion_width))
    det = Detector(load_model(cfg, None))
    passes: list[Tally] = []
    totals: dict[tuple[str, str], Tally] = {}
    with tempfile.TemporaryDirectory(prefix="cart-motions-") as work:
        for seed in args.seeds:
            aisle = make_aisle(np.random.default_rng(seed), length_px=AISLE_PX, n_gaps=N_GAPS)
            for sc in scenarios(aisle, seed, args.only):
                for t in run_pass(det, cfg, aisle, sc, seed, Path(work), args.labelled):
                    passes.append(t)
                    totals.setdefault((t.scenario, t.kind), Tally(t.scenario, t.kind)).add(t)
                    print(f"seed {seed} {t.scenario} {t.kind}: {t.alerted}/{t.gaps} alerted, {t.duplicates} dups, "
                          f"{t.false_alerts} false, {t.wrong_clears} wrong clears", file=sys.stderr, flush=True)
    rows = [totals[(name, kind)] for name in SCENARIOS for kind in ("model", "labelled") if (name, kind) in totals]
    print(table(rows))
    if args.json is not None:
        with args.json.open("w") as f:
            for t in passes + rows:
                f.write(json.dumps(asdict(t)) + "\n")


if __name__ == "__main__":
    main()
