"""`shelfscout bench`: the raw interpreter ceiling, the naive serial loop and the real pipeline, timed in one run.

All three run on the same generated 640x480 cart-pass frames held in memory (no video decode is counted), with the
same model, runtime and thread count:
- `invoke_fps`: the interpreter alone, on frames already preprocessed into the input tensor;
- `naive_fps`: Google's Raspberry Pi example pattern: a fresh capture array, `cv2.resize` into a new array (the same
  interpolation as the Detector, so both feed the model the same pixels),
  `np.expand_dims`, `set_tensor`, `invoke`, `get_tensor` and dequantize into new arrays, decode, all serial;
- `pipeline_fps`: the service's own threaded pipeline (`edge.pipeline_bench.bench_pipeline`), null until it exists.
Per-stage p50/p95 come from the in-place Detector path (preprocess into the tensor view, invoke, decode); the
pipeline's own stage percentiles are `pipeline_stages_ms`. `--repeat K` runs the three measurements K times,
interleaved, and reports the medians. `EXPLAIN` (also in the JSON) says what each figure does and does not count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from edge.commands.detect import add_model_args, load_detector_from_args, stdout_gone
from edge.decoders import DECODERS
from edge.resize import resize_interpolation
from edge.types import Gap

FRAME_SIZE = (640, 480)
BLOCK = 10  # frames per block when the detector and naive loops alternate

EXPLAIN: dict[str, str] = {
    "invoke_fps": "interpreter.invoke() alone, on a tensor already filled: no resize, no output copy, no decode, no "
                  "tracking, no publishing. The ceiling no real loop reaches.",
    "detector_fps": "serial in-place loop: resize into the input tensor, invoke, dequantize into reused buffers, "
                    "decode boxes; one thread.",
    "naive_fps": "serial loop in the pattern of Google's Raspberry Pi example (fresh arrays at every step); same "
                 "pixels and decode as the detector; no tracking, no publishing.",
    "pipeline_fps": "the service's threaded pipeline end to end: frames / wall time from first to last frame, through "
                    "capture hand-off, resize, invoke, output copy, decode, tracking, and JPEG snapshot + MQTT "
                    "publish for each alert to a local broker. It does more work per frame than the other loops, "
                    "and its threads compete with the interpreter's threads for the same cores, so it can be below "
                    "naive_fps on a small or busy machine; overlapping stages only pay off when cores are free. "
                    "With the default `threads` (usable cores - 1) the interpreter keeps its cores and the prepare "
                    "and post stages share the last one: the pipeline runs at the pace of the slower of the two.",
    "pipeline_over_invoke": "pipeline_fps / invoke_fps: the share of the interpreter ceiling the whole service "
                            "reaches.",
    "pipeline_over_naive": "pipeline_fps / naive_fps: above 1 the threaded pipeline (with tracking and publishing) "
                           "beats the serial loop that does neither.",
    "pipeline_stages_ms": "the pipeline's own per-frame stage percentiles; its `total` is the latency from the start "
                          "of preprocessing to the end of tracking/publishing, queue waits between threads included, "
                          "so it exceeds the sum of the stages.",
    "pipeline_cpu_ms_per_frame": "CPU time per frame of each pipeline stage thread (prepare, infer with the "
                                 "interpreter's own threads not counted, post): what each stage costs the cores.",
    "pipeline_cpu_bound_fps": "usable cores x 1000 / the sum of pipeline_cpu_ms_per_frame: the frame rate the "
                              "pipeline's CPU work allows if every core were busy all the time; pipeline_fps cannot "
                              "exceed it, whatever the threading.",
    "repeat": "with repeat > 1 the fps figures are medians of the runs (each run: half the detector and naive "
              "loops, interleaved in blocks, then the pipeline, then the other half, so a drift in machine speed "
              "during the run hits all three alike); `runs` lists each run's figures and ratios.",
    "ratios": "pipeline_over_invoke and pipeline_over_naive are the medians of each run's own ratio (figures "
              "measured minutes apart on a shared machine are not compared with each other).",
}


def usable_cores() -> int:
    """The CPU cores this process may run on (affinity), which bound what overlapping stages can gain."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Quantiles:
    p50: float
    p95: float
    mean: float
    min: float  # the least load-sensitive figure on a shared machine

    @staticmethod
    def of(ms: Sequence[float]) -> Quantiles:
        a = np.asarray(ms, np.float64)
        if a.size == 0:
            return Quantiles(float("nan"), float("nan"), float("nan"), float("nan"))
        return Quantiles(round(float(np.percentile(a, 50)), 3), round(float(np.percentile(a, 95)), 3),
                         round(float(a.mean()), 3), round(float(a.min()), 3))


@dataclass(frozen=True)
class RunFigures:
    """One run's throughputs (frames/s); `--repeat K` reports the medians of K of these."""

    invoke_fps: float
    detector_fps: float
    naive_fps: float
    pipeline_fps: float | None

    @property
    def pipeline_over_invoke(self) -> float | None:
        return _ratio(self.pipeline_fps, self.invoke_fps)

    @property
    def pipeline_over_naive(self) -> float | None:
        return _ratio(self.pipeline_fps, self.naive_fps)


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.median(vals)), 2) if vals else None


def _median_stages(per_run: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per stage and percentile, the median over runs of the pipeline's stage percentiles (ms)."""
    out: dict[str, dict[str, float | None]] = {}
    for stats in per_run:
        for stage, qs in (stats or {}).items():
            if isinstance(qs, dict):
                out.setdefault(stage, {})
                for q in qs:
                    vals = [r.get(stage, {}).get(q) for r in per_run if isinstance(r.get(stage), dict)]
                    med = _median([float(v) for v in vals if isinstance(v, (int, float))])
                    out[stage][q] = None if med is None else round(med, 3)
    return out


@dataclass
class BenchResult:
    """One bench run's figures; `to_json()` gives the `bench --json` object."""

    model: str
    runtime: str
    xnnpack: bool
    threads: int
    frames: int
    distinct_frames: int
    frame_size: tuple[int, int]
    input_size: tuple[int, int]
    invoke_fps: float
    detector_fps: float  # the serial in-place Detector loop (preprocess + invoke + decode)
    naive_fps: float
    pipeline_fps: float | None
    peak_rss_mb: float
    frames_mb: float  # memory the in-memory frames take (part of peak_rss_mb)
    stages_ms: dict[str, Quantiles] = field(default_factory=dict)
    pipeline: dict[str, Any] | None = None
    note: str = ""
    invoke_fps_reference_kernels: float | None = None  # int8 without XNNPACK, as tflite-runtime 2.14 runs it
    pipeline_stages_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    repeat: int = 1
    runs: list[RunFigures] = field(default_factory=list)
    cores: int = field(default_factory=usable_cores)

    @property
    def pipeline_cpu_ms_per_frame(self) -> dict[str, float]:
        """CPU ms per frame by pipeline stage thread (from the median pipeline run)."""
        return dict((self.pipeline or {}).get("cpu_ms_per_frame") or {})

    @property
    def pipeline_cpu_bound_fps(self) -> float | None:
        """The most frames/s the pipeline's CPU work per frame allows on the usable cores (all busy, no waits)."""
        total = sum(self.pipeline_cpu_ms_per_frame.values())
        return round(1000.0 * self.cores / total, 1) if total > 0 else None

    @property
    def pipeline_over_invoke(self) -> float | None:
        """Median over runs of each run's own ratio: the machine's speed drifts between runs, not within one."""
        return _median_ratio([r.pipeline_over_invoke for r in self.runs]) if self.runs else _ratio(
            self.pipeline_fps, self.invoke_fps)

    @property
    def pipeline_over_naive(self) -> float | None:
        return _median_ratio([r.pipeline_over_naive for r in self.runs]) if self.runs else _ratio(
            self.pipeline_fps, self.naive_fps)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for run, fig in zip(d["runs"], self.runs, strict=True):
            run["pipeline_over_invoke"] = fig.pipeline_over_invoke
            run["pipeline_over_naive"] = fig.pipeline_over_naive
        d["stages_ms"] = {k: asdict(v) for k, v in self.stages_ms.items()}
        d["pipeline_over_invoke"] = self.pipeline_over_invoke
        d["pipeline_over_naive"] = self.pipeline_over_naive
        d["pipeline_cpu_ms_per_frame"] = self.pipeline_cpu_ms_per_frame
        d["pipeline_cpu_bound_fps"] = self.pipeline_cpu_bound_fps
        d["ratios"] = {
            "pipeline_over_invoke": self.pipeline_over_invoke,
            "pipeline_over_naive": self.pipeline_over_naive,
            "detector_over_naive": _ratio(self.detector_fps, self.naive_fps),
        }
        d["explain"] = dict(EXPLAIN)
        return d


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _median_ratio(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.median(vals)), 3) if vals else None


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB (Linux reports ru_maxrss in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024.0, 1) if sys.platform != "darwin" else round(kib / 1024.0 / 1024.0, 1)


def cart_pass_frames(count: int, seed: int = 0, frame_size: tuple[int, int] = FRAME_SIZE) -> list[np.ndarray]:
    """`count` RGB frames of a generated cart pass (convert.cartpass), else generated shelves, else noise."""
    rng = np.random.default_rng(seed)
    w, h = frame_size
    try:
        from convert.cartpass import iter_cart_pass, make_aisle

        aisle = make_aisle(rng, length_px=max(4000, w + 12 * count + 64), height_px=h)
        frames = []
        for f in iter_cart_pass(aisle, frame_size=frame_size, seed=seed):
            frames.append(np.ascontiguousarray(f, np.uint8))
            if len(frames) >= count:
                break
        if frames:
            return frames
    except ImportError:
        pass
    try:
        from convert.synth import make_shelf_image

        return [np.ascontiguousarray(make_shelf_image(rng, width=w, height=h).image, np.uint8) for _ in range(count)]
    except ImportError:
        return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]


@dataclass
class _SerialTimes:
    """Per-frame ms of the in-place detector loop's stages and of the naive loop, over one run."""

    pre: list[float] = field(default_factory=list)
    inv: list[float] = field(default_factory=list)
    dec: list[float] = field(default_factory=list)
    naive: list[float] = field(default_factory=list)

    def run_blocks(self, det: Any, naive_loop: NaiveLoop, frames: Sequence[np.ndarray], first: int, last: int) -> None:
        """Frames first..last-1 through both loops, alternating blocks so a change in machine load hits both."""
        for start in range(first, last, BLOCK):
            k = min(BLOCK, last - start)
            p, i_, d = _timed_invoke(det, frames, k, start)
            self.pre += p
            self.inv += i_
            self.dec += d
            self.naive += naive_loop.run(frames, k, start)


def _timed_invoke(
    det: Any, frames: Sequence[np.ndarray], n: int, start: int = 0
) -> tuple[list[float], list[float], list[float]]:
    """The in-place Detector path, per stage (ms): preprocess into the tensor, invoke, decode."""
    pre, inv, dec = [], [], []
    for i in range(start, start + n):
        f = frames[i % len(frames)]
        t0 = time.perf_counter()
        det.preprocess(f)
        t1 = time.perf_counter()
        det.invoke()
        t2 = time.perf_counter()
        det.decode(f.shape[1], f.shape[0])
        t3 = time.perf_counter()
        pre.append((t1 - t0) * 1e3)
        inv.append((t2 - t1) * 1e3)
        dec.append((t3 - t2) * 1e3)
    return pre, inv, dec


class NaiveLoop:
    """Google's Pi example pattern on a second interpreter (same runtime and threads); `run` gives ms per frame."""

    def __init__(self, det: Any):
        from edge.runtime import make_interpreter

        self.det = det
        self.interpreter, _ = make_interpreter(det.bundle.model_bytes, det.runtime.threads)
        self.ind = self.interpreter.get_input_details()[0]
        self.outs = self.interpreter.get_output_details()
        self.names = [t.name for t in det.manifest.output.tensors]
        self.decode = DECODERS[det.manifest.output.decoding]

    def run(self, frames: Sequence[np.ndarray], n: int, start: int = 0) -> list[float]:
        it, ind, det = self.interpreter, self.ind, self.det
        w, h = det.input_size
        per_frame = []
        for i in range(start, start + n):
            t0 = time.perf_counter()
            captured = frames[i % len(frames)].copy()  # a camera read returns a fresh array each frame
            interp = resize_interpolation(captured.shape[1], captured.shape[0], w, h)
            resized = cv2.resize(captured, (w, h), interpolation=interp)
            input_data = np.expand_dims(resized, axis=0).astype(ind["dtype"])
            it.set_tensor(ind["index"], input_data)
            it.invoke()
            results = {}
            for name, o in zip(self.names, self.outs, strict=True):
                raw = it.get_tensor(o["index"])
                scale, zp = o["quantization"]
                results[name] = (raw.astype(np.float32) - zp) * scale if scale else raw.astype(np.float32)
            boxes, scores = self.decode(results, det.manifest, det.score_threshold)
            sx, sy = captured.shape[1] / w, captured.shape[0] / h
            gaps = [Gap(float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy, float(sc))
                    for b, sc in zip(boxes, scores, strict=True)]
            del gaps
            per_frame.append((time.perf_counter() - t0) * 1e3)
        return per_frame


def _pipeline_bench(frames: Sequence[np.ndarray], det: Any, n: int) -> tuple[float | None, dict[str, Any], str]:
    """The service's threaded pipeline on the same frames (`edge.pipeline_bench.bench_pipeline`), and a note on
    where its threads ran."""
    from edge.pipeline import CorePlan
    from edge.pipeline_bench import bench_pipeline

    plan = CorePlan.for_process(det.runtime.threads)
    out = bench_pipeline(list(frames), det, n, cores=plan)
    return out["pipeline_fps"], out, CorePlan.describe(plan)


def run_bench(
    det: Any, frames: Sequence[np.ndarray], n: int, warmup: int = 5, reference_kernels: bool = False,
    progress: Callable[[str], None] | None = None, repeat: int = 1,
) -> BenchResult:
    """All the measurements on the same frames, `repeat` times interleaved; fps figures are the runs' medians."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    say = progress or (lambda _msg: None)
    naive_loop = NaiveLoop(det)
    for i in range(warmup):
        det.detect(frames[i % len(frames)])
    naive_loop.run(frames, warmup)
    pre: list[float] = []
    inv: list[float] = []
    dec: list[float] = []
    naive: list[float] = []
    runs: list[RunFigures] = []
    extras: list[dict[str, Any]] = []
    note = ""
    for r in range(repeat):
        tag = f"run {r + 1}/{repeat}: " if repeat > 1 else ""
        say(f"{tag}in-place detector loop and naive serial loop, {n} frames each, interleaved in blocks of {BLOCK}")
        t = _SerialTimes()
        # the serial loops run half before and half after the pipeline, so a drift in the shared machine's speed
        # during the run hits the baselines and the pipeline alike (an A-B-A design)
        t.run_blocks(det, naive_loop, frames, 0, n // 2)
        say(f"{tag}pipeline")
        pipeline_fps, pipeline_extra, note = _pipeline_bench(frames, det, n)
        say(f"{tag}serial loops, second half")
        t.run_blocks(det, naive_loop, frames, n // 2, n)
        runs.append(RunFigures(
            invoke_fps=round(1000.0 * n / sum(t.inv), 2),
            detector_fps=round(1000.0 * n / (sum(t.pre) + sum(t.inv) + sum(t.dec)), 2),
            naive_fps=round(1000.0 * n / sum(t.naive), 2),
            pipeline_fps=None if pipeline_fps is None else round(pipeline_fps, 2),
        ))
        extras.append(pipeline_extra)
        pre += t.pre
        inv += t.inv
        dec += t.dec
        naive += t.naive
    ref_fps = None
    if reference_kernels:
        from edge.detector import Detector

        say("int8 on reference kernels (no XNNPACK)")
        ref = Detector(det.bundle, threads=det.runtime.threads, use_xnnpack=False)
        m = max(5, n // 10)
        _, ref_inv, _ = _timed_invoke(ref, frames, m)
        ref_fps = round(1000.0 * len(ref_inv) / sum(ref_inv), 2)
    totals = [a + b + c for a, b, c in zip(pre, inv, dec, strict=True)]
    frames_mb = round(sum(f.nbytes for f in frames) / 2**20, 1)
    rt = det.runtime
    pipeline_fps_med = _median([x.pipeline_fps for x in runs])
    # the pipeline details of the run whose pipeline_fps is the (lower) median
    with_fps = [(x.pipeline_fps, e) for x, e in zip(runs, extras, strict=True) if x.pipeline_fps is not None]
    median_extra = sorted(with_fps, key=lambda t: t[0])[(len(with_fps) - 1) // 2][1] if with_fps else extras[-1]
    stage_runs = [e["stages_ms"] for e in extras]
    return BenchResult(
        model=f"{det.manifest.name} v{det.manifest.version}",
        runtime=f"{rt.name} {rt.version}",
        xnnpack=rt.xnnpack,
        threads=rt.threads,
        frames=n,
        distinct_frames=len(frames),
        frame_size=(int(frames[0].shape[1]), int(frames[0].shape[0])),
        input_size=det.input_size,
        invoke_fps=_median([x.invoke_fps for x in runs]) or 0.0,
        detector_fps=_median([x.detector_fps for x in runs]) or 0.0,
        naive_fps=_median([x.naive_fps for x in runs]) or 0.0,
        pipeline_fps=pipeline_fps_med,
        peak_rss_mb=peak_rss_mb(),
        frames_mb=frames_mb,
        stages_ms={
            "preprocess": Quantiles.of(pre),
            "invoke": Quantiles.of(inv),
            "decode": Quantiles.of(dec),
            "detector_total": Quantiles.of(totals),
            "naive_total": Quantiles.of(naive),
        },
        pipeline=median_extra,
        note=note,
        invoke_fps_reference_kernels=ref_fps,
        pipeline_stages_ms=_median_stages(stage_runs),
        repeat=repeat,
        runs=runs,
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="time the model: raw interpreter, naive loop and the pipeline, on in-memory frames",
        description="Measure invoke_fps, naive_fps, pipeline_fps, per-stage p50/p95 and peak RSS in one run, "
                    "on a generated 640x480 cart pass held in memory.",
    )
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    p.add_argument("--frames", type=int, default=200, help="frames timed per loop (default 200)")
    p.add_argument("--distinct", type=int, default=48,
                   help="distinct generated frames held in memory and cycled (default 48, ~44 MB)")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="run the three measurements K times, interleaved, and report the medians (default 1; "
                        "use 3-5 on a busy machine)")
    p.add_argument("--reference-kernels", action="store_true",
                   help="also time int8 without XNNPACK, the way tflite-runtime 2.14 runs it")
    p.set_defaults(func=bench_cmd)


def bench_cmd(args: argparse.Namespace) -> int:
    from edge.cli import CliError

    if args.frames < 10:
        raise CliError("--frames must be at least 10")
    if args.distinct < 1:
        raise CliError("--distinct must be at least 1")
    if args.repeat < 1:
        raise CliError("--repeat must be at least 1")

    def say(msg: str) -> None:
        if not args.json:
            print(f"bench: {msg} ...", file=sys.stderr, flush=True)

    det = load_detector_from_args(args)
    say(f"generating {min(args.distinct, args.frames)} cart-pass frames {FRAME_SIZE[0]}x{FRAME_SIZE[1]}")
    frames = cart_pass_frames(min(args.distinct, args.frames))
    r = run_bench(det, frames, args.frames, reference_kernels=args.reference_kernels, progress=say,
                  repeat=args.repeat)
    try:
        _print_result(r, args.json)
    except BrokenPipeError:
        return stdout_gone()
    return 0


def _print_result(r: BenchResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r.to_json()), flush=True)
        return
    runs = f", median of {r.repeat} runs" if r.repeat > 1 else ""
    print(f"model {r.model} on {r.runtime}, XNNPACK {'yes' if r.xnnpack else 'NO'}, {r.threads} threads "
          f"on {r.cores} cores; "
          f"{r.frames} frames {r.frame_size[0]}x{r.frame_size[1]} -> {r.input_size[0]}x{r.input_size[1]}{runs}")
    print(f"  invoke_fps    {r.invoke_fps:8.1f}   interpreter alone on a filled tensor: the ceiling")
    pipe = f"{r.pipeline_fps:8.1f}" if r.pipeline_fps is not None else f"{'n/a':>8}"
    print(f"  pipeline_fps  {pipe}   threaded service pipeline end to end, incl. tracking + MQTT ({r.note})")
    print(f"  detector_fps  {r.detector_fps:8.1f}   serial, in place (preprocess + invoke + decode)")
    print(f"  naive_fps     {r.naive_fps:8.1f}   serial, Google Pi example pattern")
    if r.invoke_fps_reference_kernels is not None:
        print(f"  invoke_fps without XNNPACK {r.invoke_fps_reference_kernels:.1f}")
    if r.pipeline_over_invoke is not None:
        print(f"  pipeline/invoke {r.pipeline_over_invoke:.2f}, pipeline/naive {r.pipeline_over_naive:.2f} "
              "(the pipeline also tracks and publishes, and shares the cores with the interpreter)")
    if r.pipeline_cpu_ms_per_frame:
        cells = ", ".join(f"{k} {v:.2f}" for k, v in r.pipeline_cpu_ms_per_frame.items())
        print(f"  pipeline CPU ms/frame: {cells}; at most {r.pipeline_cpu_bound_fps} fps on {r.cores} cores")
    for k, q in r.stages_ms.items():
        print(f"  {k:<15} p50 {q.p50:7.2f} ms  p95 {q.p95:7.2f} ms  min {q.min:7.2f} ms")
    for k, qs in r.pipeline_stages_ms.items():
        cells = "  ".join(f"{name} {v:7.2f} ms" for name, v in qs.items() if v is not None)
        print(f"  pipeline {k:<10} {cells}")
    print(f"  peak_rss_mb   {r.peak_rss_mb:8.1f}   (of which in-memory frames {r.frames_mb} MB)")
