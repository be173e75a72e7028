"""Trains the gap-heatmap model on YOLO-labelled images with focal and GIoU losses (TensorFlow/Keras on the CPU).

TensorFlow is imported inside the functions. Training is seeded (numpy, Python, TensorFlow, op determinism) so the
same data and config give the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convert.dataset import (
    AugmentConfig,
    LabeledImage,
    augment,
    augment_mosaic,
    encode_targets,
    resize_with_boxes,
)
from convert.model import HEATMAP, LTRB, NetConfig, build_model

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "net.json"


def check_ema(momentum: float, name: str = "ema") -> float:
    """A weight-averaging momentum must be in [0, 1) (0: off); `name` is what the error calls it."""
    if not 0.0 <= momentum < 1.0:  # NaN fails this too
        raise ValueError(f"{name} must be in [0, 1), got {momentum}")
    return momentum


def check_crop(crop: int, name: str = "crop") -> int:
    """A training crop side must be a positive multiple of 32 (the net's largest stride); `name` is what the error
    calls it."""
    if crop < 32 or crop % 32:
        raise ValueError(f"{name} must be a positive multiple of 32, got {crop}")
    return crop


@dataclass(frozen=True)
class TrainConfig:
    """How to train: crop size, batch, steps, learning rate, loss weights, seed and augmentation."""

    net: NetConfig = field(default_factory=NetConfig)
    crop: int = 256  # training crops (the model is fully convolutional); must be a multiple of 32
    batch: int = 16
    steps: int = 3000
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 1e-4
    box_weight: float = 2.0
    seed: int = 0
    threads: int = 2
    deterministic: bool = True
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    # momentum of an exponential moving average of the weights, saved instead of the last step's (0: off)
    ema: float = 0.0

    def __post_init__(self) -> None:
        check_ema(self.ema)
        check_crop(self.crop)
        if self.steps < 1 or self.batch < 1:
            raise ValueError("steps and batch must be positive")


@dataclass(frozen=True)
class TrainResult:
    """Where the trained float weights went and how the run went."""

    out_dir: Path
    weights: Path
    net: NetConfig
    steps: int
    seconds: float
    final_loss: float
    params: int


def setup_tf(seed: int, threads: int, deterministic: bool) -> None:
    """Seed everything and pin TensorFlow's thread pools (call before building models)."""
    import keras
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised in this process
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def make_batch(
    data: Sequence[LabeledImage], idx: np.ndarray, rng: np.random.Generator, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Augmented crops (B, c, c, 3) float32 0..255 and their heatmap, ltrb and weight targets."""
    c, s = cfg.crop, cfg.net.stride
    g = c // s
    x = np.empty((len(idx), c, c, 3), np.float32)
    hm = np.empty((len(idx), g, g, 1), np.float32)
    lt = np.empty((len(idx), g, g, 4), np.float32)
    wt = np.empty((len(idx), g, g, 1), np.float32)
    for k, i in enumerate(idx):
        item = data[int(i)]
        # no draw when mosaic is off, so runs without it keep the random streams they always had
        if cfg.aug.mosaic and rng.random() < cfg.aug.mosaic:
            others = [data[int(j)] for j in rng.integers(0, len(data), 3)]
            samples = [(d.image, d.boxes) for d in (item, *others)]
            img, boxes = augment_mosaic(samples, rng, c, c, cfg.net.width, cfg.net.height, cfg.aug)
        else:
            img, boxes = augment(item.image, item.boxes, rng, c, c, cfg.net.width, cfg.net.height, cfg.aug)
        t = encode_targets(boxes, g, g, s)
        x[k], hm[k], lt[k], wt[k] = img, t.heatmap, t.ltrb, t.weight
    return x, hm, lt, wt


def _losses(tf: Any, hm_t: Any, lt_t: Any, wt: Any, hm_p: Any, lt_p: Any) -> tuple[Any, Any]:
    p = tf.clip_by_value(hm_p, 1e-4, 1.0 - 1e-4)
    pos = tf.cast(hm_t >= 0.999, tf.float32)
    pos_l = -tf.math.log(p) * tf.square(1.0 - p) * pos
    neg_l = -tf.math.log(1.0 - p) * tf.square(p) * tf.pow(1.0 - hm_t, 4.0) * (1.0 - pos)
    n = tf.maximum(tf.reduce_sum(pos), 1.0)
    focal = (tf.reduce_sum(pos_l) + tf.reduce_sum(neg_l)) / n

    tl, tt, tr, tb = tf.unstack(lt_t, axis=-1)
    pl, pt, pr, pb = tf.unstack(lt_p, axis=-1)
    at = (tl + tr) * (tt + tb)
    ap = (pl + pr) * (pt + pb)
    inter = (tf.minimum(tl, pl) + tf.minimum(tr, pr)) * (tf.minimum(tt, pt) + tf.minimum(tb, pb))
    union = at + ap - inter
    iou = inter / (union + 1e-6)
    enc = (tf.maximum(tl, pl) + tf.maximum(tr, pr)) * (tf.maximum(tt, pt) + tf.maximum(tb, pb))
    giou = iou - (enc - union) / (enc + 1e-6)
    w = wt[..., 0]
    box = tf.reduce_sum(w * (1.0 - giou)) / tf.maximum(tf.reduce_sum(w), 1e-3)
    return focal, box


def train(
    data: Sequence[LabeledImage],
    cfg: TrainConfig,
    out_dir: Path,
    init_weights: Path | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int, Any], None] | None = None,
    checkpoint_every: int = 0,
) -> TrainResult:
    """Train (or fine-tune from `init_weights`) and save the float weights and the net config under `out_dir`.

    `on_checkpoint(step, model)` is called every `checkpoint_every` steps with the training model (crop-sized
    input; copy its weights into an inference-size model to measure it).
    """
    if not data:
        raise ValueError("no training images")
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    setup_tf(cfg.seed, cfg.threads, cfg.deterministic)
    model = build_model(cfg.net, input_shape=(cfg.crop, cfg.crop))
    if init_weights is not None:
        model.load_weights(str(init_weights))
    lr = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.lr * 0.1,
        decay_steps=max(cfg.steps - cfg.warmup, 1),
        alpha=0.02,
        warmup_target=cfg.lr,
        warmup_steps=cfg.warmup,
    )
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay, clipnorm=5.0,
                                 use_ema=cfg.ema > 0, ema_momentum=cfg.ema)

    @tf.function
    def step(x: Any, hm_t: Any, lt_t: Any, wt: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            focal, box = _losses(tf, hm_t, lt_t, wt, out[HEATMAP], out[LTRB])
            loss = focal + cfg.box_weight * box
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return focal, box

    rng = np.random.default_rng(cfg.seed)
    t0 = time.monotonic()
    ema_f = ema_b = math.nan
    bar = tqdm(range(cfg.steps), desc="train", unit="step", disable=not progress, mininterval=2.0)
    # Batches are drawn in order from one seeded generator, each one prepared on a helper thread while the
    # previous step runs (OpenCV and numpy release the GIL), so the result does not depend on timing.
    def next_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return make_batch(data, rng.integers(0, len(data), cfg.batch), rng, cfg)

    pool = ThreadPoolExecutor(1)
    pending = pool.submit(next_batch)
    for i in bar:
        x, hm, lt, wt = pending.result()
        if i + 1 < cfg.steps:
            pending = pool.submit(next_batch)
        f, b = step(x, hm, lt, wt)
        f, b = float(f), float(b)
        ema_f = f if math.isnan(ema_f) else 0.97 * ema_f + 0.03 * f
        ema_b = b if math.isnan(ema_b) else 0.97 * ema_b + 0.03 * b
        if i % 10 == 0:
            bar.set_postfix(focal=f"{ema_f:.3f}", giou=f"{ema_b:.3f}")
        if on_step is not None:
            on_step(i, ema_f + cfg.box_weight * ema_b)
        if on_checkpoint is not None and checkpoint_every and (i + 1) % checkpoint_every == 0:
            on_checkpoint(i + 1, model)
    pool.shutdown()
    if cfg.ema:
        opt.finalize_variable_values(model.trainable_variables)  # the averaged weights replace the last step's
    seconds = time.monotonic() - t0

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    model.save_weights(str(weights))
    (out_dir / CONFIG_FILE).write_text(
        json.dumps({"net": cfg.net.to_dict(), "train": _train_dict(cfg), "seconds": round(seconds, 1)}, indent=2)
    )
    return TrainResult(
        out_dir, weights, cfg.net, cfg.steps, seconds, ema_f + cfg.box_weight * ema_b, int(model.count_params())
    )


def _train_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("net")
    return d


def net_config_for(weights: Path) -> NetConfig:
    """The net config saved with a weights file: `NAME.json` for `NAME.weights.h5`, else `net.json` beside it."""
    name = weights.name.removesuffix(".weights.h5") if weights.name.endswith(".weights.h5") else weights.stem
    for cand in (weights.with_name(name + ".json"), weights.parent / CONFIG_FILE):
        if cand.exists():
            return NetConfig.from_dict(json.loads(cand.read_text())["net"])
    raise ValueError(f"no net config next to {weights} (expected {name}.json or {CONFIG_FILE})")


def load_float_model(weights: Path, net: NetConfig | None = None) -> tuple[Any, NetConfig]:
    """The inference-size Keras model with trained weights (net config read next to the weights if not given)."""
    if net is None:
        net = net_config_for(weights)
    model = build_model(net)
    model.load_weights(str(weights))
    return model, net


class FloatPredictor:
    """Runs the float Keras model on RGB images of any size (squashed to the model input, as on the device)."""

    def __init__(self, model: Any, net: NetConfig, manifest: Any) -> None:
        self.model, self.net, self.manifest = model, net, manifest

    def raw(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        import cv2

        x = np.stack(
            [cv2.resize(im, (self.net.width, self.net.height), interpolation=cv2.INTER_AREA) for im in images]
        ).astype(np.float32)
        out = self.model(x, training=False)
        return {k: np.asarray(v) for k, v in out.items()}

    def detect(self, images: Sequence[np.ndarray], score_threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
        from edge.decoders.heatmap import decode_gap_heatmap

        res = []
        for start in range(0, len(images), 16):
            chunk = images[start : start + 16]
            out = self.raw(chunk)
            for k, im in enumerate(chunk):
                one = {name: v[k : k + 1] for name, v in out.items()}
                boxes, scores = decode_gap_heatmap(one, self.manifest, score_threshold)
                sx, sy = im.shape[1] / self.net.width, im.shape[0] / self.net.height
                res.append((boxes * np.array([sx, sy, sx, sy], np.float32), scores))
        return res


def preresize(data: Sequence[LabeledImage], max_side: int) -> list[LabeledImage]:
    """Shrink large images once (keeps memory and augmentation time down); small ones are kept as they are."""
    out = []
    for item in data:
        h, w = item.image.shape[:2]
        if max(h, w) > max_side:
            s = max_side / max(h, w)
            img, boxes = resize_with_boxes(item.image, item.boxes, round(w * s), round(h * s))
            out.append(LabeledImage(item.path, img, boxes))
        else:
            out.append(item)
    return out
