"""Builds a gap-heatmap bundle end to end (data -> train -> int8 -> measure -> sign); `python -m` it for the default.

`python -m convert.build_default` (what `make model` runs) rebuilds models/shelfgap-default.bundle from a fixed
seed on generated shelves only, measures it on a generated validation set and, when present, on the real ESD
`dev/` photos (../shared/data/esd/dev next to the repository, never trained on), and writes the model card.
The same `build` function serves `shelfscout train` and `shelfscout finetune`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from convert.dataset import AugmentConfig, LabeledImage, list_yolo_images, load_yolo_folder
from convert.evaluate import EvalResult, ImageDetections, best_fbeta, check_beta, detect_with_bundle, evaluate
from convert.model import NetConfig
from convert.train import TrainConfig, preresize

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
DEFAULT_NAME = "shelfgap-default"
DEFAULT_VERSION = 6  # v6: v5's weights in a graph XNNPACK runs whole (v5: RandConv restyling; v4: threshold by F0.5)
DEFAULT_SEED = 20260429
DEFAULT_RANDCONV = 0.5  # share of training crops restyled by a random convolution (`convert.dataset.random_conv`)
# measured: v1 (2500 images) ESD dev AP50 0.414 (int8) after 3000 steps, 0.435 after 4500; v2 (5000 images) 0.443
DEFAULT_STEPS = 6000
DEFAULT_SYNTH_TRAIN = 5000
ESD_DEV = REPO.parent / "shared" / "data" / "esd" / "dev"
MIN_SCORE = 0.05  # detections kept for AP


@dataclass(frozen=True)
class BuildSpec:
    """One bundle build: where data comes from, how to train, and where the result goes."""

    name: str
    version: int
    out_bundle: Path
    work_dir: Path
    train: TrainConfig = field(default_factory=TrainConfig)
    synth_train: int = 3000  # generated training images (0: none)
    synth_val: int = 300
    train_dirs: tuple[Path, ...] = ()  # extra YOLO folders to train on (fine-tuning)
    train_items: tuple[LabeledImage, ...] = ()  # already-loaded training images (a split of a folder)
    val_sets: tuple[tuple[str, Path], ...] = ()  # extra (name, YOLO folder) sets to measure on
    val_items: tuple[tuple[str, tuple[LabeledImage, ...]], ...] = ()
    init_weights: Path | None = None
    key_path: Path | None = None  # None: write an unsigned bundle
    public_key_out: Path | None = None
    threshold_set: str = "synthetic-val"  # the validation set whose best-F-beta threshold the bundle ships with
    # F0.5 (precision counts twice): on a cart each gap is seen in many frames, so a frame's miss is made up by the
    # next, while a false detection on a product recurs frame after frame and becomes a false alert
    threshold_beta: float = 0.5
    golden_count: int = 2
    reuse_weights: bool = False  # skip training when work_dir already holds weights (re-measure/re-bundle only)
    workers: int = 2
    progress: bool = True
    eval_every: int = 0  # log float AP50 on (up to 100 images of) each validation set every N steps

    def __post_init__(self) -> None:  # checked when the spec is made, long before any training
        check_beta(self.threshold_beta, "threshold_beta")


@dataclass
class BuildReport:
    """What a build produced and measured."""

    bundle: str
    manifest_sha256: str
    bundle_bytes: int
    model_bytes: int
    params: int
    train_seconds: float
    train_images: int
    threshold: float
    metrics: dict[str, Any]
    parity: dict[str, Any]
    invoke_ms: float
    seconds: float
    # float AP50 of each validation set at every checkpoint ({"step", "seconds", set: AP50}), empty without
    # eval_every; kept in the report so that the card can be redrawn without the build's work folder
    learning_curve: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


SYNTH_STAMP = "generator.json"


def _source(module: str) -> Path:
    """The source file of a project module, `convert.synth` -> REPO/convert/synth.py."""
    return Path(__file__).resolve().parents[1] / (module.replace(".", "/") + ".py")


def generator_sources() -> list[str]:
    """`convert.synth` and every project module it imports, directly or through another (read from their absolute
    `import` and `from ... import` statements, lazy ones too; the project uses no relative imports), sorted: the
    code a generated image or label comes from."""
    import ast

    todo, seen = ["convert.synth"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(_source(module).read_bytes())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:  # also `from convert import x`
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            todo += [n for n in names if n.split(".")[0] in ("convert", "edge") and _source(n).is_file()]
    return sorted(seen)


def generator_stamp(n: int, seed: int) -> dict[str, Any]:
    """What a generated folder depends on: count, seed and the generator's source code.

    `synth_sha256` hashes the name and source of every module of `generator_sources()`: a change to any of them
    makes cached folders stale."""
    import hashlib

    h = hashlib.sha256()
    for module in generator_sources():
        src = _source(module).read_bytes()
        h.update(module.encode() + b"\0" + hashlib.sha256(src).digest())
    return {"n": n, "seed": seed, "synth_sha256": h.hexdigest()}


def synth_folder(path: Path, n: int, seed: int, workers: int, progress: bool) -> Path:
    """A generated YOLO folder of n images; reused only if complete and made by this generator and seed."""
    from convert.synth import write_yolo_dataset

    stamp = generator_stamp(n, seed)
    stamp_path = path / SYNTH_STAMP
    if (
        stamp_path.is_file()
        and json.loads(stamp_path.read_text()) == stamp
        and (path / "images").is_dir()
        and len(list((path / "images").glob("*.jpg"))) == n
    ):
        return path
    if path.exists():
        shutil.rmtree(path)
    from tqdm import tqdm

    with tqdm(total=n, desc=f"synth {path.name}", unit="img", disable=not progress, mininterval=2.0) as bar:
        write_yolo_dataset(path, n, seed, workers=workers, progress=bar.update)
    stamp_path.write_text(json.dumps(stamp) + "\n")
    return path


def split_folder(folder: Path, val_share: float, seed: int) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """A fixed random split of a YOLO folder (by seed) into training and measuring images."""
    if not 0.0 < val_share < 1.0:
        raise ValueError(f"the validation share must be between 0 and 1, got {val_share}")
    return split_items(load_yolo_folder(folder), val_share, seed)


def cross_fitted(dets: Sequence[ImageDetections], items: Sequence[LabeledImage], beta: float) -> dict[str, Any]:
    """Precision, recall and F1 of a set at a threshold chosen on the other half of it (by the build's rule: best
    F-beta, rounded, within 0.15-0.8), both ways round, counts pooled: what the figures at a threshold tuned on the
    set itself would be on images it was not tuned on."""
    halves = [list(range(0, len(items), 2)), list(range(1, len(items), 2))]
    tp = fp = fn = 0
    thresholds = []
    for pick, use in ((0, 1), (1, 0)):
        if not halves[pick] or not halves[use]:
            continue
        chosen = evaluate([dets[i] for i in halves[pick]], [items[i].boxes for i in halves[pick]], 0.4)
        t = float(np.clip(round(best_fbeta(chosen, beta)[1], 2), 0.15, 0.8))
        other = evaluate([dets[i] for i in halves[use]], [items[i].boxes for i in halves[use]], t)
        tp, fp, fn = tp + other.tp, fp + other.fp, fn + other.fn
        thresholds.append(t)
    prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    f1 = 2 * prec * rec / max(prec + rec, 1e-12)
    return {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4), "thresholds": thresholds,
            "note": "threshold chosen on one half of the set, measured on the other, both ways round"}


def split_items(items: Sequence[Any], val_share: float, seed: int) -> tuple[list[Any], list[Any]]:
    """`split_folder`'s split of a folder's items (in `load_yolo_folder` order), or of anything listed alongside
    them, such as their detections."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = max(1, int(round(len(items) * val_share)))
    val = [items[i] for i in sorted(order[:n_val])]
    train = [items[i] for i in sorted(order[n_val:])]
    return train, val


def measure_sets(
    predict: Any, sets: Sequence[tuple[str, Sequence[LabeledImage]]], threshold: float
) -> dict[str, tuple[EvalResult, list[ImageDetections]]]:
    out = {}
    for name, items in sets:
        dets = predict([it.image for it in items])
        out[name] = (evaluate(dets, [it.boxes for it in items], threshold), dets)
    return out


def rethreshold(dets: list[ImageDetections], items: Sequence[LabeledImage], threshold: float) -> EvalResult:
    return evaluate(dets, [it.boxes for it in items], threshold)


def invoke_ms(model_bytes: bytes, runs: int = 50, threads: int = 2) -> float:
    """Median invoke time of the int8 model here (LiteRT, XNNPACK), for the record, not a device figure."""
    from edge.runtime import make_interpreter

    it, _ = make_interpreter(model_bytes, threads=threads)
    d = it.get_input_details()[0]
    bits = np.random.default_rng(0).integers(0, 256, d["shape"], dtype=np.uint8)
    it.set_tensor(d["index"], bits.view(np.dtype(d["dtype"])))
    for _ in range(5):
        it.invoke()
    times = []
    for _ in range(runs):
        t = time.monotonic()
        it.invoke()
        times.append(time.monotonic() - t)
    return float(np.median(times) * 1000)


def _summary(r: EvalResult) -> dict[str, Any]:
    return {
        "ap50": round(r.ap50, 4), "precision": round(r.precision, 4), "recall": round(r.recall, 4),
        "f1": round(r.f1, 4), "images": r.images, "ground_truth": r.ground_truth, "tp": r.tp, "fp": r.fp,
        "fn": r.fn, "best_f1": round(r.best_f1, 4), "best_f1_threshold": round(r.best_f1_threshold, 3),
    }


def build(spec: BuildSpec) -> BuildReport:
    """Train (or reuse) the float model, convert it to int8, measure both, and write the signed bundle."""
    from convert.bundler import build_heatmap_bundle, build_time, heatmap_manifest, load_or_create_key
    from convert.quantize import ParityReport, output_diffs, write_parity
    from convert.train import FloatPredictor, load_float_model, train
    from edge.bundle import MODEL, Bundle, Thresholds, read_bundle

    build_time()  # a bad $SOURCE_DATE_EPOCH is refused now, not after the training
    t_start = time.monotonic()
    work = spec.work_dir
    work.mkdir(parents=True, exist_ok=True)
    seed = spec.train.seed
    net = spec.train.net

    # ---- data ----
    train_items: list[LabeledImage] = list(spec.train_items)
    if spec.synth_train:
        train_items += load_yolo_folder(synth_folder(work / "synth-train", spec.synth_train, seed, spec.workers, spec.progress))
    for d in spec.train_dirs:
        train_items += load_yolo_folder(d)
    train_items = preresize(train_items, 480)
    val_sets: list[tuple[str, list[LabeledImage]]] = []
    if spec.synth_val:
        val_sets.append(
            ("synthetic-val", load_yolo_folder(synth_folder(work / "synth-val", spec.synth_val, seed + 1, spec.workers, spec.progress)))
        )
    val_sets += [(n, list(items)) for n, items in spec.val_items]
    val_sets += [(n, load_yolo_folder(p)) for n, p in spec.val_sets]
    if not val_sets:
        raise ValueError("nothing to measure on: give a synthetic validation set or a validation folder")
    if spec.threshold_set not in [n for n, _ in val_sets]:
        raise ValueError(f"threshold set {spec.threshold_set!r} is not among {[n for n, _ in val_sets]}")

    # ---- train ----
    weights = work / "float" / "model.weights.h5"
    train_seconds = 0.0
    if spec.reuse_weights and weights.exists():
        log.info("reusing %s", weights)
        train_seconds = float(json.loads((weights.parent / "net.json").read_text()).get("seconds", 0.0))
    else:
        if not train_items:
            raise ValueError("no training images")
        (work / "learning-curve.jsonl").unlink(missing_ok=True)  # this run's checkpoints only, not an earlier run's
        res = train(
            train_items, spec.train, work / "float", spec.init_weights, spec.progress,
            on_checkpoint=_checkpoint_logger(net, val_sets, work / "learning-curve.jsonl") if spec.eval_every else None,
            checkpoint_every=spec.eval_every,
        )
        train_seconds = res.seconds
        weights = res.weights
    model, net = load_float_model(weights, net)

    # ---- int8 ----
    rng = np.random.default_rng(seed)
    rep_src = [it.image for it in val_sets[0][1][:100]]
    if train_items:
        rep_idx = rng.choice(len(train_items), size=min(200, len(train_items)), replace=False)
        rep_src = [train_items[int(i)].image for i in rep_idx]
    rep = [cv2.resize(im, (net.width, net.height), interpolation=cv2.INTER_AREA) for im in rep_src]
    from convert.quantize import convert_int8

    tflite = convert_int8(model, rep)
    (work / "model.tflite").write_bytes(tflite)

    # ---- measure float and int8 ----
    probe_manifest = heatmap_manifest(tflite, spec.name, spec.version, net.stride, Thresholds(score=0.4))
    probe = Bundle(probe_manifest, probe_manifest.to_json_bytes(), {MODEL: tflite}, None, "<build>")
    fpred = FloatPredictor(model, net, probe_manifest)

    def float_fn(images: Sequence[np.ndarray]) -> list[ImageDetections]:
        return [ImageDetections(b, s) for b, s in fpred.detect(images, MIN_SCORE)]

    def int8_fn(images: Sequence[np.ndarray]) -> list[ImageDetections]:
        return detect_with_bundle(probe, images, threads=2, min_score=MIN_SCORE)

    int8_res = measure_sets(int8_fn, val_sets, 0.4)
    float_res = measure_sets(float_fn, val_sets, 0.4)
    _, best = best_fbeta(int8_res[spec.threshold_set][0], spec.threshold_beta)
    threshold = float(np.clip(round(best, 2), 0.15, 0.8))
    metrics: dict[str, Any] = {
        "iou": 0.5, "threshold_from": spec.threshold_set, "threshold_rule": f"best F{spec.threshold_beta:g}", "sets": {},
    }
    items_by = dict(val_sets)
    for name, _ in val_sets:
        fi = rethreshold(float_res[name][1], items_by[name], threshold)
        qi = rethreshold(int8_res[name][1], items_by[name], threshold)
        metrics["sets"][name] = {"int8": _summary(qi), "float": _summary(fi)}
        log.info("%s: AP50 float %.4f int8 %.4f, F1@%.2f int8 %.4f", name, fi.ap50, qi.ap50, threshold, qi.f1)
    # the threshold set's precision, recall and F1 are at a threshold chosen on those very images, so they are
    # optimistic (AP50 is not: it has no threshold); say what a threshold chosen elsewhere gives
    metrics["sets"][spec.threshold_set]["int8"]["cross_fitted"] = cross_fitted(
        int8_res[spec.threshold_set][1], items_by[spec.threshold_set], spec.threshold_beta)

    # ---- parity ----
    first = val_sets[0][1][:16]
    from convert.quantize import TFLiteRunner

    runner = TFLiteRunner(tflite)

    def float_raw(im: np.ndarray) -> dict[str, np.ndarray]:
        return fpred.raw([im])

    imgs = [cv2.resize(it.image, (net.width, net.height), interpolation=cv2.INTER_AREA) for it in first]
    mx, mean, step = output_diffs(float_raw, runner, imgs)
    ts = metrics["sets"][spec.threshold_set]
    parity = ParityReport(
        images=len(imgs), max_abs_diff=mx, mean_abs_diff=mean, quant_step=step,
        float_ap50=ts["float"]["ap50"], int8_ap50=ts["int8"]["ap50"],
        float_f1=ts["float"]["f1"], int8_f1=ts["int8"]["f1"],
        notes=[f"AP50 on {spec.threshold_set} ({ts['int8']['images']} images); output diffs on its first {len(imgs)}"]
        + [f"{n}: AP50 float {m['float']['ap50']:.4f}, int8 {m['int8']['ap50']:.4f}" for n, m in metrics["sets"].items()],
    )
    write_parity(parity, work)
    ms = invoke_ms(tflite)
    metrics.update({
        "parity": {"max_abs_diff": {k: round(v, 5) for k, v in mx.items()},
                   "mean_abs_diff": {k: round(v, 5) for k, v in mean.items()}},
        "params": int(model.count_params()),
        "train_images": len(train_items),
        "train_steps": spec.train.steps,
        # not the build host's invoke time: it differs run to run, and the manifest (so the bundle) should not
        # (the time is in the build report and the model card)
    })

    # ---- bundle ----
    key = None
    if spec.key_path is not None:
        key = load_or_create_key(spec.key_path, spec.public_key_out)
    if spec.synth_val > 0:
        golden_src = [it.image for it in val_sets[0][1][: spec.golden_count]]  # generated shelves
    else:  # never a user's photos (a store's frames, or licensed ones) inside a bundle that is shipped to a fleet
        from convert.synth import make_shelf_image

        grng = np.random.default_rng(spec.train.seed)
        golden_src = [make_shelf_image(grng, net.width, net.height).image for _ in range(spec.golden_count)]
    manifest = build_heatmap_bundle(
        spec.out_bundle, tflite, golden_src, spec.name, spec.version, net.stride,
        Thresholds(score=threshold, nms_iou=0.5, max_detections=100), key, metrics,
    )
    keys = {"signing-key": key.public_key()} if key is not None else None
    checked = read_bundle(spec.out_bundle, keys, allow_unsigned=key is None)
    shutil.copy2(weights, work / "float-final.weights.h5")
    report = BuildReport(
        bundle=str(spec.out_bundle), manifest_sha256=checked.sha256, bundle_bytes=spec.out_bundle.stat().st_size,
        model_bytes=len(tflite), params=int(model.count_params()), train_seconds=round(train_seconds, 1),
        train_images=len(train_items), threshold=threshold, metrics=dict(manifest.metrics),
        parity=json.loads(parity.to_json()), invoke_ms=round(ms, 3), seconds=round(time.monotonic() - t_start, 1),
        learning_curve=read_learning_curve(work / "learning-curve.jsonl"),
    )
    (work / "build-report.json").write_text(report.to_json())
    return report


def read_learning_curve(path: Path) -> list[dict[str, Any]]:
    """The checkpoints `_checkpoint_logger` wrote, oldest first; none if it did not run."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _checkpoint_logger(
    net: NetConfig, val_sets: Sequence[tuple[str, Sequence[LabeledImage]]], path: Path
) -> Any:
    """A training callback that measures the float model's AP50 on up to 100 images of each set and logs it."""
    from convert.model import build_model
    from convert.train import FloatPredictor
    from edge.bundle import InputSpec, Manifest, OutputSpec, TensorSpec

    gw, gh = net.out_size
    manifest = Manifest(
        name="checkpoint", version=0, task="", input=InputSpec(net.width, net.height),
        output=OutputSpec("gap-heatmap", (TensorSpec("heatmap", (1, gh, gw, 1), "float32"),
                                          TensorSpec("ltrb", (1, gh, gw, 4), "float32")), stride=net.stride),
    )
    inference = build_model(net)
    t0 = time.monotonic()

    def on_checkpoint(step: int, model: Any) -> None:
        inference.set_weights(model.get_weights())
        pred = FloatPredictor(inference, net, manifest)
        row: dict[str, Any] = {"step": step, "seconds": round(time.monotonic() - t0, 1)}
        for name, items in val_sets:
            sub = list(items)[:: max(1, len(items) // 100)][:100]
            dets = [ImageDetections(b, s) for b, s in pred.detect([it.image for it in sub], MIN_SCORE)]
            row[name] = round(evaluate(dets, [it.boxes for it in sub], 0.5).ap50, 4)
        log.info("checkpoint %s", row)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    return on_checkpoint


def default_spec(
    work: Path, steps: int, synth_train: int, synth_val: int, with_esd: bool, models: Path = MODELS,
    seed: int = DEFAULT_SEED, randconv: float = DEFAULT_RANDCONV,
) -> BuildSpec:
    from convert.bundler import DEFAULT_KEY_NAME

    # two heads: the shared-head variant is 11-13 % faster, but its two runs measured 0.445 and 0.427 ESD AP50
    net = NetConfig()
    val_sets: tuple[tuple[str, Path], ...] = ()
    if with_esd and ESD_DEV.is_dir():
        list_yolo_images(ESD_DEV)
        val_sets = (("esd-dev", ESD_DEV),)
    return BuildSpec(
        name=DEFAULT_NAME,
        version=DEFAULT_VERSION,
        out_bundle=models / f"{DEFAULT_NAME}.bundle",
        work_dir=work,
        train=TrainConfig(net=net, steps=steps, seed=seed, aug=AugmentConfig(randconv=randconv)),
        synth_train=synth_train,
        synth_val=synth_val,
        val_sets=val_sets,
        key_path=_key_path(),
        public_key_out=models / "keys" / f"{DEFAULT_KEY_NAME}.pub",  # beside the bundle, not always the repo
    )


def _key_path() -> Path:
    from convert.bundler import DEFAULT_KEY_NAME, signing_key_path

    return signing_key_path(None, DEFAULT_KEY_NAME)  # the project's release key, not a user's


def write_card(path: Path, report: BuildReport, spec: BuildSpec) -> None:
    """The model card (models/README.md): data, training, measured figures, licence; regenerated by each build."""
    sets = report.metrics.get("sets", {})
    rows = []
    for name, m in sets.items():
        f, q = m["float"], m["int8"]
        rows.append(
            f"| {name} | {q['images']} | {q['ground_truth']} | {f['ap50']:.3f} | {q['ap50']:.3f} | "
            f"{q['precision']:.3f} | {q['recall']:.3f} | {q['f1']:.3f} | {q['best_f1']:.3f} @ {q['best_f1_threshold']:.2f} |"
        )
    net = spec.train.net
    t = spec.train
    par = report.parity
    curve = ""
    pts = report.learning_curve
    names = [k for k in (pts[0] if pts else {}) if k not in ("step", "seconds")]
    if pts and names:
        curve = "\nLearning curve (float AP50 on up to 100 images of each set, during training):\n\n"
        curve += "| step | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
        curve += "".join(f"| {p['step']} | " + " | ".join(f"{p[n]:.3f}" for n in names) + " |\n" for p in pts)
    restyle = f", random-convolution restyling of {t.aug.randconv:.0%} of the crops" if t.aug.randconv else ""
    extra = ""
    notes = path.parent / "NOTES.md"
    if notes.exists():
        extra = "\n" + notes.read_text()
    text = f"""# {spec.name} (version {spec.version}): the built-in shelf-gap model

Generated by `make model` (`python -m convert.build_default`); do not edit by hand, edit `models/NOTES.md` (appended
below) or the build instead.

## What it is
- Task: find empty shelf spots ("gaps") in RGB frames of store shelves. One class, `empty`.
- Input: {net.width}x{net.height} RGB, int8 with scale 1.0 and zero point -128: camera pixel p goes in as p - 128,
  which is p with its top bit flipped (one XOR; `edge.detector` does it on the prepare thread). The whole frame is
  squashed to the input size (no letterbox).
- Outputs (decoding `gap-heatmap`, stride {net.stride}): `heatmap` (1, {net.height // net.stride}, {net.width // net.stride}, 1), the
  probability that a cell is a gap's centre; `ltrb` (1, {net.height // net.stride}, {net.width // net.stride}, 4), distances from the cell
  centre to the gap's left, top, right and bottom sides in stride units. Decoder: 3x3 local maxima at or above the
  threshold, boxes from `ltrb`, greedy NMS at IoU 0.5 (edge/decoders/heatmap.py).
- Network: a fully-convolutional CenterNet/FCOS-style net: depthwise-separable blocks to stride 32, a light
  top-down merge back to stride {net.stride}, {"one head block feeding two 1x1 output convs" if net.shared_head else "two small heads"}. {report.params:,} parameters, int8 TFLite
  {report.model_bytes / 1024:.0f} KiB, bundle {report.bundle_bytes / 1024:.0f} KiB.
- Threshold shipped: {report.threshold:.2f}, the threshold with the best F{spec.threshold_beta:g} of the int8 model on
  `{spec.threshold_set}`{" (precision weighted: on a cart a frame's miss is made up by the next frame, a false detection recurs)" if spec.threshold_beta < 1 else ""}.
- Invoke time on the build host (x86, LiteRT + XNNPACK, 2 threads, median): {report.invoke_ms:.2f} ms.

## Data
- Training: {report.train_images} shelf images generated by `convert/synth.py` (seed {t.seed}), procedural products,
  rails and gaps with exact labels. No real photo is used for training, so the weights carry no third-party data
  licence.
- Validation: {spec.synth_val} further generated images (seed {t.seed + 1}) and, when present next to the repository,
  the real ESD `dev/` photos (SKU-110K-derived, academic/non-commercial use only: used for measurement only, never
  trained on, never copied here).

## Training
- Keras 3 on the CPU, {t.steps} steps of {t.batch} random {t.crop}x{t.crop} crops (the net is fully convolutional),
  AdamW (lr {t.lr}, cosine, {t.warmup} warm-up steps), BatchNorm momentum {net.bn_momentum}; focal loss on Gaussian
  centre targets plus {t.box_weight} x GIoU on the box sides near each centre. Augmentation: zoom, aspect, flips,
  colour/white balance, blur, noise, JPEG{restyle}. Seeded (op determinism on). Training took {report.train_seconds / 60:.1f}
  min here on 2 shared cores.
- int8: full-integer post-training quantization with 200 training images as the representative set; int8 input
  (a uint8 input would put a QUANTIZE op at the head of the graph that XNNPACK does not run), int8 outputs.

## Measured (IoU 0.5; P/R/F1 at the shipped threshold; AP50 all-point interpolated)
| set | images | gaps | AP50 float | AP50 int8 | precision | recall | F1 | best F1 @ thr |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Float vs int8 parity on {par['images']} images: max |diff| heatmap {par['max_abs_diff'].get('heatmap', 0):.4f},
ltrb {par['max_abs_diff'].get('ltrb', 0):.4f} (stride units); mean |diff| heatmap
{par['mean_abs_diff'].get('heatmap', 0):.5f}, ltrb {par['mean_abs_diff'].get('ltrb', 0):.5f}.
{curve}
## Files
- `shelfgap-default.bundle`: the signed bundle (manifest, model.tflite, golden.npz, manifest.sig).
- `shelfgap-default.weights.h5`, `shelfgap-default.json`: the float weights and net config, the starting point of
  `shelfscout finetune`.
- `keys/shelfscout-default-2.pub`: the public key this bundle is signed with; `keys/shelfscout-default.pub` signed
  versions 1-3 and stays trusted for their rollback copies (the private keys are never committed).

## Licence
The weights and the bundle are Apache-2.0, like the code: trained only on data this project generates.
{extra}"""
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.build_default", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "build" / "default", help="scratch folder (default build/default)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default {DEFAULT_STEPS})")
    p.add_argument("--synth-train", type=int, default=DEFAULT_SYNTH_TRAIN)
    p.add_argument("--synth-val", type=int, default=300)
    p.add_argument("--no-esd", action="store_true", help="do not measure on ../shared/data/esd/dev")
    p.add_argument("--reuse-weights", action="store_true", help="re-measure and re-bundle the trained weights")
    p.add_argument("--no-card", action="store_true", help="do not rewrite models/README.md")
    p.add_argument("--card-only", action="store_true",
                   help="only rewrite the model card from the last build's report (MODELS/shelfgap-default.json) "
                        "and models/NOTES.md: after editing the notes, without re-bundling")
    p.add_argument("--models", type=Path, default=MODELS, help="where the bundle, weights and card go (default models/)")
    p.add_argument("--eval-every", type=int, default=1000, help="log float AP50 every N training steps (0: never)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the generated images and the training (default {DEFAULT_SEED}, the shipped one)")
    p.add_argument("--randconv", type=float, default=DEFAULT_RANDCONV, metavar="P",
                   help=f"share of training crops restyled by a random convolution (default {DEFAULT_RANDCONV:g})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = default_spec(args.work, args.steps, args.synth_train, args.synth_val, not args.no_esd, args.models,
                            seed=args.seed, randconv=args.randconv)
    except ValueError as e:
        p.error(str(e))
    spec = replace(spec, reuse_weights=args.reuse_weights, eval_every=args.eval_every)
    if args.card_only:
        saved = args.models / f"{DEFAULT_NAME}.json"
        if not saved.exists():
            p.error(f"--card-only: no build report at {saved}; run a build first")
        write_card(args.models / "README.md", BuildReport(**json.loads(saved.read_text())["report"]), spec)
        return 0
    report = build(spec)
    shutil.copy2(args.work / "float-final.weights.h5", args.models / f"{DEFAULT_NAME}.weights.h5")
    (args.models / f"{DEFAULT_NAME}.json").write_text(
        json.dumps({"net": spec.train.net.to_dict(), "report": json.loads(report.to_json())}, indent=2) + "\n"
    )
    if not args.no_card:
        if args.models != MODELS and (MODELS / "NOTES.md").exists():
            shutil.copy2(MODELS / "NOTES.md", args.models / "NOTES.md")
        write_card(args.models / "README.md", report, spec)
    print(report.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
