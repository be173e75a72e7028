"""The model-work subcommands: `train`, `finetune`, `quantize`, `eval` and `bundle` (TensorFlow loaded only when run)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edge.cli import CliError

if TYPE_CHECKING:
    from convert.dataset import AugmentConfig
    from convert.evaluate import ImageDetections
    from convert.report import Against
    from edge.bundle import Bundle

_V = TypeVar("_V", int, float)  # a flag's value, checked by a library rule

# peak learning rate of `train` and `finetune` when --lr is not given. Fine-tuning from the default weights used
# 1e-3 until measured: 3e-3 gives +1.3-1.4 held-out AP50 points on ESD (two seeds), 3e-4 -2 (models/NOTES.md)
PEAK_LR = 3e-3
# share of `finetune`'s training crops built as mosaics of four photos when --mosaic is not given and there is no
# soup; `train` and `finetune --soup N` use 0. On ESD's held-out 30 %: +1.7 / +0.5 / +0.9 / -0.8 points over 0 in
# four paired seeds, but a soup of those three runs lost 0.8 points to the soup of the three without (models/NOTES.md)
FINETUNE_MOSAIC = 0.5
# `finetune`'s default length: on ESD's held-out 30 % (300 training photos), 800 steps measured 2.1 and 1.3 points
# under 2000 at seeds 0 and 1 (paired), 1200 steps 2.1 at seed 0; 4000 were no better than 2000 in an older recipe
# (models/NOTES.md)
FINETUNE_STEPS = 2000


def register(sub: Any) -> None:
    _register_train(sub)
    _register_finetune(sub)
    _register_quantize(sub)
    _register_eval(sub)
    _register_bundle(sub)


# ---- train / finetune -------------------------------------------------------------------------------------------
def _version(args: argparse.Namespace) -> int:
    from convert.bundler import build_version

    if args.version is None:
        return build_version()
    if args.version < 0:
        raise CliError(f"--version must be a non-negative integer, got {args.version}")
    return int(args.version)


def _common_train_args(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    p.add_argument("--crop", type=int, default=256,
                   help="side of the square training crops, taken around the model input's scale (multiple of 32; "
                        "default 256)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {PEAK_LR:g})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder for data, weights and reports (default OUT.work beside the bundle; it keeps "
                        "the float weights and images made from your frames: delete it when their licence says so)")
    p.add_argument("--name", default=None, help="model name in the manifest")
    p.add_argument("--version", type=int, default=None,
                   help="model version, an integer; a cart takes only a higher one than it runs (default: the "
                        "build time as YYYYMMDDHHMM, so each build outranks the last and the project's models)")
    p.add_argument("--key", type=Path, default=None,
                   help="ed25519 private key (PEM) to sign with (default $SHELFSCOUT_SIGNING_KEY, else "
                        "~/.config/shelfscout/keys/my-models.key, created if missing; carts trust it once "
                        "my-models.pub is in their /etc/shelfscout/keys)")
    p.add_argument("--unsigned", action="store_true", help="write an unsigned bundle (runs only in dev mode)")
    p.add_argument("--threshold-beta", type=float, default=0.5,
                   help="ship the threshold with the best F-beta on the threshold set (default 0.5: precision "
                        "counts twice, as a cart sees each gap in many frames; 1: best F1, for more found gaps)")
    p.add_argument("--randconv", type=float, default=0.0, metavar="P",
                   help="restyle this share of training crops through a random convolution (0..1, default 0): "
                        "colours and local brightness change, shapes stay. The default model is trained with 0.5 "
                        "(a better start for finetune); while fine-tuning it measured no gain (models/NOTES.md)")
    p.add_argument("--mosaic", type=float, default=None, metavar="P",
                   help="build this share of training crops from four photos, one tile each, at the usual zoom "
                        f"(0..1; default {FINETUNE_MOSAIC:g} for finetune, where single runs measured +0.6 held-out "
                        "points over 0 on ESD in four seeds; 0 for finetune --soup N, whose average of mosaic runs "
                        "measured no gain, and for train, never measured on generated shelves; models/NOTES.md)")
    p.add_argument("--ema", type=float, default=0.0, metavar="M",
                   help="save an exponential moving average of the weights with momentum M (e.g. 0.995) instead "
                        "of the last step's (default 0: off; measured no gain while fine-tuning, models/NOTES.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _register_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="generate shelves, train the gap-heatmap model, convert to int8, measure and write a signed bundle",
        description="Train from scratch on generated shelves (--synth N) and/or YOLO folders (--data DIR), then "
        "quantize to int8, measure float and int8 on the validation sets and write OUT (a signed bundle).",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="bundle file to write")
    p.add_argument("--data", type=Path, action="append", default=[], help="YOLO folder to train on (repeatable)")
    p.add_argument("--synth", type=int, default=3000, help="generated training images (default 3000; 0 for none)")
    p.add_argument("--synth-val", type=int, default=300, help="generated validation images (default 300)")
    p.add_argument("--val", type=Path, action="append", default=[], help="YOLO folder to measure on (repeatable)")
    p.add_argument("--size", type=int, default=320, help="square model input size (multiple of 32; default 320)")
    p.add_argument("--stride", type=int, choices=(4, 8), default=4, help="output stride (default 4)")
    p.add_argument("--shared-head", action="store_true",
                   help="one head block for both outputs: 11-13%% less invoke time; two runs measured 0.445 and 0.427 "
                        "ESD AP50 against 0.443 for version 3, the default then (models/NOTES.md)")
    p.add_argument("--init", type=Path, default=None, help="float weights (.weights.h5) to start from")
    _common_train_args(p, 3000)
    p.set_defaults(func=_train_cmd)


def _register_finetune(sub: Any) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune the default model on your own YOLO folder of real frames and write a bundle",
        description="Split DATA (fixed by --split-seed) into training and measuring images, fine-tune from the "
        "default model's float weights, convert to int8, measure on the held-out share (before and after) and "
        "write OUT. Keep OUT outside the repository when DATA is not yours to redistribute.",
    )
    p.add_argument("data", type=Path, metavar="DATA", help="YOLO folder with images/ and labels/")
    p.add_argument("--out", type=Path, required=True, help="bundle file to write")
    p.add_argument("--val-share", type=float, default=0.3, help="share of DATA held out for measuring (default 0.3)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/measure split (default 0)")
    p.add_argument("--from", dest="init", type=Path, default=None,
                   help="float weights to start from (default models/shelfgap-default.weights.h5)")
    p.add_argument("--synth-mix", type=int, default=0,
                   help="also train on this many generated images (default 0; 600 next to 300 real photos "
                        "lowered held-out AP50 from 0.697 to 0.638, models/NOTES.md)")
    p.add_argument("--scratch", action="store_true", help="train from random weights instead of the default model")
    p.add_argument("--soup", type=int, default=1, metavar="N",
                   help="fine-tune N times (seeds SEED..SEED+N-1) and ship the average of their weights: one model, "
                        "the same invoke time, N times the training (default 1; soups of 2, 3 and 5 runs measured +1.0 "
                        "to +1.9 held-out AP50 points over their runs' mean, models/NOTES.md)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="write DIR/report.html: the fine-tuned bundle on the held-out frames (hits, misses, false "
                        "alarms) with its PR curve beside the shipped model's")
    p.add_argument("--size", type=int, default=None,
                   help="square model input size, a multiple of 32 (default: the starting weights' size, 320). "
                        "The net is fully convolutional, so the weights carry over; a bigger input finds smaller "
                        "gaps and costs about (size/320)^2 of the invoke time")
    _common_train_args(p, FINETUNE_STEPS)
    p.set_defaults(func=_finetune_cmd)


def _key_args(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    return _signing_key(args), None


def _signing_key(args: argparse.Namespace) -> Path | None:
    """The key to sign with; only the default one (~/.config/shelfscout/keys/my-models.key) is created when missing:
    a key named with --key or $SHELFSCOUT_SIGNING_KEY that is not there is a typo, not a wish for a new key."""
    if args.unsigned:
        return None
    import os

    from convert.bundler import KEY_ENV, signing_key_path

    key = signing_key_path(args.key)
    named = args.key is not None or bool(os.environ.get(KEY_ENV))
    if named and not key.exists():
        how = "--key" if args.key is not None else f"${KEY_ENV}"
        raise CliError(f"{how} {key}: no such key (create one with `shelfscout keygen`, or leave {how} out to sign "
                       "with ~/.config/shelfscout/keys/my-models.key, created when missing)")
    return key


def _print_report(report: Any) -> None:
    print(report.to_json())


def _say_key(key: Path | None) -> None:
    """Tell the user which key signed the bundle and what a cart needs to run it (stderr: stdout is the JSON)."""
    if key is None:
        print("the bundle is unsigned: it runs only with --dev-allow-unsigned-models", file=sys.stderr)
        return
    print(f"signed with {key}; carts run the bundle once {key.with_suffix('.pub').name} is in their "
          f"/etc/shelfscout/keys (here: --keys {key.parent})", file=sys.stderr)


def _train_cmd(args: argparse.Namespace) -> int:
    from convert.build_default import BuildSpec
    from convert.model import NetConfig
    from convert.train import TrainConfig

    for d in [*args.data, *args.val]:
        _check_yolo(d)
    aug = _augment(args, 0.0)
    try:
        net = NetConfig(width=args.size, height=args.size, stride=args.stride, shared_head=args.shared_head)
        tcfg = TrainConfig(net=net, steps=args.steps, batch=args.batch, seed=args.seed, crop=_crop(args.crop),
                           warmup=min(100, args.steps // 10), aug=aug, ema=_ema(args.ema), lr=args.lr or PEAK_LR)
    except ValueError as e:
        raise CliError(str(e)) from e
    if args.synth <= 0 and not args.data:
        raise CliError("nothing to train on: give --synth N or --data DIR")
    key, pub = _key_args(args)
    names = [d.name for d in args.val]
    if len(set(names)) < len(names):  # measured sets are named by their folder: one would hide the other
        raise CliError(f"--val folders must have different names, got {', '.join(str(d) for d in args.val)}")
    spec = BuildSpec(
        name=args.name or args.out.stem, version=_version(args), out_bundle=args.out,
        work_dir=args.work or args.out.with_suffix(".work"), train=tcfg, synth_train=max(args.synth, 0),
        synth_val=max(args.synth_val, 0), train_dirs=tuple(args.data),
        val_sets=tuple((d.name, d) for d in args.val), init_weights=args.init, key_path=key,
        public_key_out=pub, progress=not args.quiet,
        threshold_set="synthetic-val" if args.synth_val > 0 else (args.val[0].name if args.val else ""),
        threshold_beta=_beta(args.threshold_beta),
    )
    _print_report(_run_build(spec))
    _say_key(key)
    return 0


def _finetune_cmd(args: argparse.Namespace) -> int:
    from convert.build_default import DEFAULT_NAME, MODELS, BuildSpec, split_folder
    from convert.model import NetConfig
    from convert.train import TrainConfig, net_config_for

    _check_yolo(args.data)
    if args.soup < 1:
        raise CliError(f"--soup is a number of fine-tuning runs (1: no soup), got {args.soup}")
    if args.soup > 1 and args.scratch:  # each seed would start from other random weights: nothing to average
        raise CliError("--soup averages runs that start from the same weights; it cannot be used with --scratch")
    aug = _augment(args, FINETUNE_MOSAIC if args.soup == 1 else 0.0)  # measured defaults
    init: Path | None = None
    net = NetConfig()
    if not args.scratch:
        init = args.init or MODELS / f"{DEFAULT_NAME}.weights.h5"
        if not init.exists():
            raise CliError(f"float weights {init} do not exist (rebuild the default with `make model`, or --scratch)")
        try:
            net = net_config_for(init)
        except ValueError as e:
            raise CliError(str(e)) from e
    if args.size is not None:
        try:
            net = dataclasses.replace(net, width=args.size, height=args.size)
        except ValueError as e:
            raise CliError(f"--size: {e}") from e
    if not 0.0 < args.val_share < 1.0:
        raise CliError(f"--val-share must be between 0 and 1, got {args.val_share}")
    train_items, val_items = split_folder(args.data, args.val_share, args.split_seed)
    for share, part in (("training", train_items), ("held-out", val_items)):
        if not any(len(it.boxes) for it in part):
            raise CliError(f"{args.data}: the {share} share ({len(part)} images, --val-share {args.val_share:g}) has "
                           "no labelled gap: fine-tuning needs gaps to learn from and to measure the result on")
    held_gaps = sum(len(it.boxes) for it in val_items)
    if len(val_items) < FEW_HELDOUT_FRAMES or held_gaps < FEW_HELDOUT_GAPS:
        print(f"note: the held-out share is {len(val_items)} frames with {held_gaps} labelled gaps: the bundle's "
              f"threshold and the verdict against the shipped model rest on them, and below about "
              f"{FEW_HELDOUT_FRAMES} frames or {FEW_HELDOUT_GAPS} gaps they are noise; label more frames first",
              file=sys.stderr)
    lr = args.lr or PEAK_LR
    try:
        tcfg = TrainConfig(net=net, steps=args.steps, batch=args.batch, seed=args.seed, lr=lr,
                           crop=_crop(args.crop),
                           warmup=min(100, args.steps // 10), aug=aug, ema=_ema(args.ema))
    except ValueError as e:
        raise CliError(str(e)) from e
    key, pub = _key_args(args)
    held = f"{args.data.name}-heldout"
    spec = BuildSpec(
        name=args.name or args.out.stem, version=_version(args), out_bundle=args.out,
        work_dir=args.work or args.out.with_suffix(".work"), train=tcfg, synth_train=max(args.synth_mix, 0),
        synth_val=0, train_items=tuple(train_items), val_items=((held, tuple(val_items)),),
        init_weights=init, key_path=key, public_key_out=pub, threshold_set=held, progress=not args.quiet,
        threshold_beta=_beta(args.threshold_beta),
    )
    built = _run_build(spec, soup=args.soup)
    soup = built if args.soup > 1 else None
    report = built.report if soup is not None else built
    out = json.loads(report.to_json())
    if soup is not None:
        out["soup"] = soup.to_dict()
    out["split"] = {"train": len(train_items), "heldout": len(val_items), "seed": args.split_seed}
    heldout = _baseline(val_items, args.out)
    out["baseline"] = heldout.baseline
    if args.report is not None:
        out["report"] = str(_finetune_report(args.report, val_items, heldout, f"shelfscout finetune: {held}"))
    print(json.dumps(json_safe(out), indent=2, allow_nan=False))
    _say_verdict(heldout.against, len(val_items))
    _say_threshold(out, held)
    _say_key(key)
    return 0


def _say_threshold(report: dict[str, Any], held: str) -> None:
    """One line on stderr: precision and recall at the bundle's threshold, which was chosen on the held-out frames
    themselves, beside what a threshold chosen on the other half of them gives (the honest figure)."""
    q = report.get("metrics", {}).get("sets", {}).get(held, {}).get("int8", {})
    cf = q.get("cross_fitted")
    if not cf or "precision" not in q:
        return
    print(f"at its threshold {report['threshold']:.2f}, chosen on these frames: precision {q['precision']:.3f}, "
          f"recall {q['recall']:.3f}; chosen on the other half of them instead: precision {cf['precision']:.3f}, "
          f"recall {cf['recall']:.3f} (expect the latter on new frames)", file=sys.stderr)


FEW_HELDOUT_FRAMES = 30  # below these the held-out threshold and verdict are noise (ESD: +-5 AP points at 128)
FEW_HELDOUT_GAPS = 50


def _say_verdict(against: Against | None, frames: int) -> None:
    """One line on stderr: is the fine-tuned model better than the shipped one (`against`, a report.Against, or
    None without one) on the held-out frames? Figures unrounded until printed."""
    if against is None:
        return
    base, d = against.result.ap50, against.comparison.diff
    figures = (f"held-out AP50 {base + d.value:.3f} against the shipped model's {base:.3f} "
               f"on {frames} frames: {d.value:+.3f}, 95 % interval {d.low:+.3f} to {d.high:+.3f}")
    if d.low > 0:
        verdict = "better"
    elif d.high < 0:
        verdict = "WORSE than the shipped model: do not roll it out (more or better-labelled frames, or --steps)"
    else:
        verdict = "not yet distinguishable from the shipped model on these frames (label more of them)"
    print(f"{figures}: {verdict}", file=sys.stderr)


def _crop(crop: int) -> int:
    from convert.train import check_crop

    return _by_rule(check_crop, crop, "--crop")


def _augment(args: argparse.Namespace, default_mosaic: float) -> AugmentConfig:
    """The training augmentation the flags ask for (`default_mosaic` without --mosaic); a bad value is a one-line
    error naming the flag."""
    from convert.dataset import AugmentConfig

    shares = {"randconv": args.randconv, "mosaic": default_mosaic if args.mosaic is None else args.mosaic}
    for flag, value in shares.items():
        try:
            AugmentConfig(**{flag: value})
        except ValueError as e:
            raise CliError(f"--{flag}: {e}") from e
    return AugmentConfig(**shares)


def _by_rule(rule: Callable[[_V, str], _V], value: _V, flag: str) -> _V:
    """`value` checked by the library's own rule (`check_beta`, `check_ema`), a one-line error naming the flag."""
    try:
        return rule(value, flag)
    except ValueError as e:
        raise CliError(str(e)) from e


def _ema(m: float) -> float:
    from convert.train import check_ema

    return _by_rule(check_ema, m, "--ema")


def _beta(beta: float) -> float:
    from convert.evaluate import check_beta

    return _by_rule(check_beta, beta, "--threshold-beta")


def _run_build(spec: Any, soup: int = 1) -> Any:
    """build(spec), or with soup > 1 build_soup(spec, soup) (a SoupReport); a ValueError is a one-line error."""
    from convert.build_default import build
    from convert.soup import build_soup

    if spec.synth_val <= 0 and not spec.val_sets and not spec.val_items:
        raise CliError("nothing to measure on: give --synth-val N or --val DIR")
    try:
        return build_soup(spec, soup) if soup > 1 else build(spec)
    except ValueError as e:
        raise CliError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class _HeldOut:
    """The fine-tuned bundle's detections on the held-out frames, and the shipped model's figures beside them."""

    tuned: Bundle  # the fine-tuned bundle
    dets: list[ImageDetections]  # its detections per frame
    baseline: dict[str, Any] | None  # the shipped model's figures and the paired gain (None: no shipped model)
    against: Against | None  # the shipped model's figures beside it (None: no shipped model)


def _baseline(val_items: list[Any], tuned_path: Path) -> _HeldOut:
    """The shipped default bundle measured on the same held-out images, and the fine-tuned bundle's AP50 gain over
    it with its paired bootstrap interval (are these frames enough to tell the two apart?)."""
    from convert.bootstrap import Matched, compare_ap50
    from convert.evaluate import detect_with_bundle, evaluate, match_images
    from convert.report import Against
    from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, BundleError, load_public_keys, read_bundle

    images, gts = [it.image for it in val_items], [it.boxes for it in val_items]
    tuned = read_bundle(tuned_path, None, allow_unsigned=True)  # just written and checked by the build
    tuned_dets = detect_with_bundle(tuned, images)
    try:
        bundle = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))
    except BundleError:
        return _HeldOut(tuned, tuned_dets, None, None)
    dets = detect_with_bundle(bundle, images)
    r = evaluate(dets, gts, bundle.manifest.thresholds.score)
    gain = compare_ap50(Matched.of(tuned_dets, gts), Matched.of(dets, gts))
    baseline = {"model": _model_desc(bundle), "ap50": round(r.ap50, 4), "f1": round(r.f1, 4),
                "precision": round(r.precision, 4), "recall": round(r.recall, 4),
                "finetuned_minus_default": gain.to_dict()}
    against = Against(f"{_model_desc(bundle)} (shipped)", r, gain, match_images(dets, gts, r.threshold))
    return _HeldOut(tuned, tuned_dets, baseline, against)


def _finetune_report(report_dir: Path, val_items: list[Any], held: _HeldOut, title: str) -> Path:
    """The fine-tuned bundle's HTML report on the held-out frames, beside the shipped model when there is one."""
    from convert.bootstrap import DEFAULT_RESAMPLES, Matched, ap50_interval
    from convert.calibration import score_bins
    from convert.evaluate import evaluate
    from convert.report import write_report

    gts = [it.boxes for it in val_items]
    res = evaluate(held.dets, gts, held.tuned.manifest.thresholds.score)
    label = f"{_model_desc(held.tuned)} (fine-tuned)"
    bins = score_bins(held.dets, gts, [it.image.shape[0] for it in val_items], held.tuned.manifest.input.height,
                      letterbox_in=_letterbox_in(held.tuned, val_items))
    return write_report(report_dir, res, _examples(val_items, held.dets, res.threshold), title,
                        f"{label} on {len(val_items)} held-out images",
                        ap_interval=ap50_interval(Matched.of(held.dets, gts), DEFAULT_RESAMPLES),
                        against=held.against, model_label=label, score_bins=bins)


# ---- quantize ---------------------------------------------------------------------------------------------------
def _register_quantize(sub: Any) -> None:
    p = sub.add_parser(
        "quantize",
        help="convert trained float weights to a full-integer int8 .tflite and write a float-vs-int8 parity report",
    )
    p.add_argument("weights", type=Path, metavar="WEIGHTS", help="model.weights.h5 (net.json next to it)")
    p.add_argument("--rep", type=Path, required=True, help="YOLO (or images/) folder for the representative set")
    p.add_argument("--out", type=Path, required=True, help=".tflite file to write")
    p.add_argument("--count", type=int, default=200, help="representative images (default 200)")
    p.add_argument("--parity", type=Path, default=None, help="folder for parity.json/parity.md (default: next to --out)")
    p.set_defaults(func=_quantize_cmd)


def _quantize_cmd(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from convert.dataset import IMAGE_SUFFIXES, read_image_rgb
    from convert.quantize import ParityReport, TFLiteRunner, convert_int8, output_diffs, write_parity
    from convert.train import load_float_model, net_config_for

    if not args.weights.exists():
        raise CliError(f"weights {args.weights} do not exist")
    try:
        net_config_for(args.weights)
    except ValueError as e:
        raise CliError(str(e)) from e
    img_dir = args.rep / "images" if (args.rep / "images").is_dir() else args.rep
    paths = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.count]
    if not paths:
        raise CliError(f"no images in {img_dir}")
    model, net = load_float_model(args.weights)
    rep = [cv2.resize(read_image_rgb(p), (net.width, net.height), interpolation=cv2.INTER_AREA) for p in paths]
    tfl = convert_int8(model, rep)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(tfl)
    runner = TFLiteRunner(tfl)

    def float_fn(im: np.ndarray) -> dict[str, np.ndarray]:
        out = model(im[None].astype(np.float32), training=False)
        return {k: np.asarray(v) for k, v in out.items()}

    mx, mean, step = output_diffs(float_fn, runner, rep[:16])
    rep_obj = ParityReport(images=min(16, len(rep)), max_abs_diff=mx, mean_abs_diff=mean, quant_step=step)
    j, m = write_parity(rep_obj, args.parity or args.out.parent)
    print(json.dumps({"tflite": str(args.out), "bytes": len(tfl), "parity_json": str(j), "parity_md": str(m),
                      "max_abs_diff": mx, "mean_abs_diff": mean}))
    return 0


# ---- eval -------------------------------------------------------------------------------------------------------
def _register_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="measure a bundle on a labelled YOLO folder: precision, recall, F1, AP50, counts; HTML report",
        description="Runs the bundle's int8 model through the device detector on DATA/images and compares with "
        "DATA/labels (IoU 0.5, greedy by score). P/R/F1 are at the bundle's own threshold unless --threshold.",
    )
    p.add_argument("data", type=Path, metavar="DATA", help="folder with images/ and YOLO labels/")
    p.add_argument("--model", default=None, metavar="BUNDLE", help="bundle to measure (default: the built-in)")
    p.add_argument("--keys", metavar="DIR", action="append", default=[], help="extra folder of trusted *.pub keys")
    p.add_argument("--dev-allow-unsigned-models", action="store_true",
                   help="DEVELOPMENT ONLY: measure a bundle without a valid signature")
    p.add_argument("--json", action="store_true", help="print one JSON object (and nothing else) on stdout")
    p.add_argument("--report", type=Path, default=None, metavar="DIR", help="write DIR/report.html")
    p.add_argument("--threshold", type=float, default=None, help="score threshold for P/R/F1")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    p.add_argument("--curve-points", type=int, default=50, help="PR-curve points in the JSON (default 50)")
    p.add_argument("--against", default=None, metavar="BUNDLE",
                   help="also measure BUNDLE on the same images and give AP50(--model) - AP50(BUNDLE) with its "
                        "paired bootstrap interval: is a new model better on these photos, or within the noise?")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="resamples of the images for the 95%% AP50 intervals (default 1000; 0: none)")
    p.set_defaults(func=_eval_cmd)


def _eval_cmd(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from convert.calibration import score_bins
    from convert.dataset import load_yolo_folder
    from convert.evaluate import detect_with_bundle, evaluate, match_images
    from edge.commands.detect import load_bundle_from_args

    _check_yolo(args.data)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CliError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.bootstrap < 0:
        raise CliError(f"--bootstrap must be 0 (no intervals) or a number of resamples, got {args.bootstrap}")
    if args.against and not args.bootstrap:
        raise CliError("--against compares by the bootstrap: give --bootstrap N with N > 0")
    bundle = load_bundle_from_args(args)
    other = load_bundle_from_args(args, model=args.against) if args.against else None
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be a number of images, 1 or more, got {args.limit}")
    items = load_yolo_folder(args.data, args.limit)
    gts = [it.boxes for it in items]

    def measure(b: Any) -> tuple[list[Any], Any]:
        """Detections (down to 0.05, for AP) and figures of bundle b, at its own threshold unless --threshold."""
        t = b.manifest.thresholds.score if args.threshold is None else args.threshold
        d = detect_with_bundle(b, [it.image for it in items], threads=args.threads, min_score=min(0.05, t))
        return d, evaluate(d, gts, t)

    dets, res = measure(bundle)
    thr = res.threshold
    interval = None
    against = None
    out: dict[str, Any] = {"data": str(args.data), "model": _model_info(bundle)}
    out.update(res.to_dict(args.curve_points))
    if res.ground_truth == 0:  # no labelled gap: AP and recall are not defined (not 0)
        out.update(ap50=None, recall=None)
    bins = score_bins(dets, gts, [it.image.shape[0] for it in items], bundle.manifest.input.height,
                      letterbox_in=_letterbox_in(bundle, items))
    out["score_bins"] = [asdict(b) for b in bins]
    if args.bootstrap:
        from convert.bootstrap import Matched, ap50_interval, compare_ap50
        from convert.report import Against

        matched = Matched.of(dets, gts)
        interval = ap50_interval(matched, args.bootstrap)
        out["ap50_interval"] = interval.to_dict()
        if other is not None:
            other_dets, other_res = measure(other)
            other_matched = Matched.of(other_dets, gts)
            comparison = compare_ap50(matched, other_matched, args.bootstrap)
            against = Against(_model_desc(other), other_res, comparison,
                              match_images(other_dets, gts, other_res.threshold))
            out["against"] = {"model": _model_info(other), "ap50": other_res.ap50,
                              "ap50_interval": ap50_interval(other_matched, args.bootstrap).to_dict(),
                              **comparison.to_dict()}
    if args.report is not None:
        from convert.report import write_report

        path = write_report(args.report, res, _examples(items, dets, thr), f"shelfscout eval: {args.data.name}",
                            f"{_model_desc(bundle)} on {len(items)} images of {args.data}",
                            ap_interval=interval, against=against, model_label=_model_desc(bundle),
                            score_bins=bins)
        out["report"] = str(path)
    if args.json:
        print(json.dumps(json_safe(out), allow_nan=False))
    else:
        print(f"{args.data}: {res.images} images, {res.ground_truth} gaps, model {bundle.manifest.name} "
              f"v{bundle.manifest.version}")
        print(f"  threshold {thr:.2f}: precision {res.precision:.3f}, recall {res.recall:.3f}, F1 {res.f1:.3f} "
              f"(TP {res.tp}, FP {res.fp}, FN {res.fn})")
        # from the figures themselves, as the report: the JSON's are rounded to 4 places, and rounding those again
        # to 3 could differ from the report by one in the last place (0.4715 -> 0.471 against 0.47153 -> 0.472)
        band = (f" ({interval.level * 100:.0f} % interval over images {interval.low:.3f}-{interval.high:.3f})"
                if interval is not None else "")
        if res.ground_truth == 0:  # no labelled gap: AP and recall mean nothing, only false alarms count
            print(f"  no labelled gaps: AP50 and recall are not defined here; {res.fp} detections at the threshold "
                  "are all false alarms (if these frames are fully stocked)")
        else:
            print(f"  AP50 {res.ap50:.3f}{band}; best F1 {res.best_f1:.3f} at threshold {res.best_f1_threshold:.2f}")
        if against is not None:
            d = against.comparison.diff
            print(f"  against {against.desc}: AP50 {against.result.ap50:.3f}; difference "
                  f"{d.value:+.3f} ({d.level * 100:.0f} % paired interval {d.low:+.3f} to {d.high:+.3f}), "
                  f"higher in {against.comparison.share_a_higher:.0%} of {d.resamples} resamples")
        if "report" in out:
            print(f"  report: {out['report']}")
    return 0


def _examples(items: list[Any], dets: list[Any], threshold: float) -> list[Any]:
    """The report's examples: each labelled image with its detections matched at `threshold`."""
    from convert.evaluate import match_images
    from convert.report import Example

    matches = match_images(dets, [it.boxes for it in items], threshold)
    return [Example(it.path.name, it.image, it.boxes, m) for it, m in zip(items, matches, strict=True)]


def _model_desc(bundle: Any) -> str:
    return f"{bundle.manifest.name} v{bundle.manifest.version}"


def _letterbox_in(bundle: Any, items: Any) -> tuple[list[int], int] | None:
    """`score_bins`' letterbox_in for a bundle that letterboxes its frames, else None."""
    spec = bundle.manifest.input
    return ([it.image.shape[1] for it in items], spec.width) if spec.resize == "letterbox" else None


def json_safe(obj: Any) -> Any:
    """OBJ with every non-finite float (the open end of the last height bin, an undefined figure) as null: JSON has
    no Infinity or NaN, and strict parsers (JavaScript's JSON.parse) refuse them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _model_info(bundle: Any) -> dict[str, Any]:
    return {"name": bundle.manifest.name, "version": bundle.manifest.version, "source": bundle.source}


# ---- bundle -----------------------------------------------------------------------------------------------------
DEFAULT_WRAP_SCORE = 0.4

def _register_bundle(sub: Any) -> None:
    p = sub.add_parser(
        "bundle",
        help="sign an int8 .tflite into a bundle: our gap-heatmap model, or your own SSD / Ultralytics YOLO model",
        description="Wrap an int8 TFLite model into a signed bundle a cart runs: the manifest (input and output "
                    "spec, labels, thresholds), golden vectors made on generated shelves, and an ed25519 signature. "
                    "--decoding ssd takes a model ending in TFLite_Detection_PostProcess (its labels from class 0, "
                    "no background); yolo an Ultralytics detection export (1, 4 + classes, N), fed letterboxed "
                    "frames as Ultralytics trains (--resize).",
    )
    p.add_argument("tflite", type=Path, metavar="MODEL.tflite", help="int8 TFLite model")
    p.add_argument("--out", type=Path, required=True, help="bundle file to write")
    p.add_argument("--decoding", choices=("gap-heatmap", "ssd", "yolo"), default="gap-heatmap",
                   help="how to read the outputs (default gap-heatmap)")
    p.add_argument("--name", default=None, help="model name (default: the file name)")
    p.add_argument("--version", type=int, default=None,
                   help="model version, an integer; a cart takes only a higher one than it runs (default: the "
                        "build time as YYYYMMDDHHMM)")
    p.add_argument("--labels", default=None,
                   help="comma-separated class labels (default: the class names an Ultralytics export carries, else "
                        "'empty')")
    p.add_argument("--gap-class", action="append", default=[], metavar="LABEL",
                   help="ssd/yolo: a label that is an empty spot (repeatable; default: the labels named like one, "
                        "such as empty, gap or out_of_stock, or the only label)")
    p.add_argument("--score", type=float, default=None,
                   help="score threshold (default 0.4; a .tflite does not carry the one its model was tuned for: "
                        "the shipped model's is in its manifest, `shelfscout model inspect`)")
    p.add_argument("--nms", type=float, default=0.5, help="NMS IoU (default 0.5)")
    p.add_argument("--stride", type=int, default=None, help="gap-heatmap: output stride (default: from the shapes)")
    p.add_argument("--metrics", type=Path, default=None, help="JSON file of measured metrics to record")
    p.add_argument("--key", type=Path, default=None,
                   help="ed25519 private key (PEM) to sign with (default $SHELFSCOUT_SIGNING_KEY, else "
                        "~/.config/shelfscout/keys/my-models.key, created if missing)")
    p.add_argument("--unsigned", action="store_true", help="write an unsigned bundle (runs only in dev mode)")
    p.add_argument("--resize", choices=("squash", "letterbox"), default=None,
                   help="ssd/yolo: how a frame becomes the model's input: letterbox keeps its aspect ratio with grey "
                        "bands, as Ultralytics trains (the default for yolo); squash stretches it (the default for "
                        "ssd, as the TF Object Detection API trains)")
    p.set_defaults(func=_bundle_cmd)


def _bundle_cmd(args: argparse.Namespace) -> int:
    from convert.bundler import load_or_create_key

    if not args.tflite.exists():
        raise CliError(f"{args.tflite} does not exist")
    labels = tuple(x.strip() for x in (args.labels or "").split(",") if x.strip())
    if args.decoding == "yolo":
        from convert.wrap import ultralytics_names

        carried = ultralytics_names(args.tflite.read_bytes())
        if carried and not labels:
            labels = tuple(carried)
            print(f"labels from the model's Ultralytics metadata: {', '.join(labels)}", file=sys.stderr)
        elif carried and list(labels) != carried:
            print(f"warning: --labels {','.join(labels)} differ from the class names the model carries "
                  f"({', '.join(carried)}); using --labels", file=sys.stderr)
    labels = labels or ("empty",)
    metrics = None
    if args.metrics:
        try:
            metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
        except OSError as e:
            raise CliError(f"--metrics {args.metrics}: cannot read: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CliError(f"--metrics {args.metrics}: not JSON: {e}") from None
        if not isinstance(metrics, dict):
            raise CliError(f"--metrics {args.metrics}: expected a JSON object of figures, got {type(metrics).__name__}")
    key_path = _signing_key(args)
    name = args.name or args.tflite.stem
    default_score = args.score is None
    if default_score:
        args.score = DEFAULT_WRAP_SCORE
    try:
        if args.decoding == "gap-heatmap":
            manifest = _bundle_heatmap(args, name, labels, metrics, key_path)
        else:
            try:
                from convert.wrap import wrap_external_model
            except ImportError as e:
                raise CliError(f"wrapping {args.decoding} models needs convert/wrap.py: {e}") from e
            key = load_or_create_key(key_path) if key_path is not None else None
            manifest = wrap_external_model(
                args.tflite, args.decoding, name, _version(args), labels, args.out, key,
                score=args.score, nms=args.nms, metrics=metrics, gap_labels_given=args.gap_class,
                resize=args.resize or ("letterbox" if args.decoding == "yolo" else "squash"),
            )
    except ValueError as e:
        raise CliError(str(e)) from e
    print(json.dumps({"bundle": str(args.out), "name": manifest.name, "version": manifest.version,
                      "decoding": manifest.output.decoding, "signed": key_path is not None,
                      "gap_labels": [manifest.labels[i] for i in manifest.gap_classes or range(len(manifest.labels))],
                      "key": str(key_path) if key_path is not None else None,
                      "thresholds": {"score": manifest.thresholds.score, "nms_iou": manifest.thresholds.nms_iou}}))
    if default_score:  # said once the bundle is written, so that a failure stays one line
        print(f"score threshold {DEFAULT_WRAP_SCORE}, the default: a .tflite does not carry its model's own; pass "
              "--score, e.g. the threshold in the manifest of the bundle the model came from", file=sys.stderr)
    return 0


def _bundle_heatmap(args: argparse.Namespace, name: str, labels: tuple[str, ...], metrics: Any,
                    key_path: Path | None) -> Any:
    import numpy as np

    from convert.bundler import build_heatmap_bundle, load_or_create_key
    from convert.quantize import describe
    from convert.synth import make_shelf_image
    from edge.bundle import Thresholds

    model_bytes = args.tflite.read_bytes()
    ins, outs = describe(model_bytes)
    if len(ins.shape) != 4 or any(len(o.shape) != 4 for o in outs):
        raise CliError(f"this model's outputs ({', '.join(str(tuple(o.shape)) for o in outs)}) are not gap-heatmap "
                       "maps (1, H, W, C): for an SSD or Ultralytics YOLO model pass --decoding ssd or yolo")
    stride = args.stride or ins.shape[2] // max(o.shape[2] for o in outs)
    rng = np.random.default_rng(0)
    golden = [make_shelf_image(rng, ins.shape[2], ins.shape[1]).image for _ in range(3)]
    key = load_or_create_key(key_path) if key_path is not None else None
    return build_heatmap_bundle(
        args.out, model_bytes, golden, name, _version(args), stride,
        Thresholds(score=args.score, nms_iou=args.nms), key, metrics,
    )


def _check_yolo(path: Path) -> None:
    from convert.dataset import list_yolo_images

    try:
        list_yolo_images(path)
    except ValueError as e:
        raise CliError(str(e)) from e


if __name__ == "__main__":  # pragma: no cover
    print("use `shelfscout train|finetune|quantize|eval|bundle`", file=sys.stderr)
