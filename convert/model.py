"""The gap-heatmap network: a small fully-convolutional Keras model that maps raw RGB to a gap heatmap and box sides.

The model takes float pixels in 0..255 (the int8 build turns that into a raw uint8 input), rescales them inside
the graph, and returns two tensors so that each gets its own int8 scale:
- `heatmap` (1, H/s, W/s, 1): sigmoid, how likely the cell is the centre of an empty shelf spot;
- `ltrb` (1, H/s, W/s, 4): ReLU distances from the cell centre to the box's left, top, right and bottom sides,
  in units of the stride `s`.
TensorFlow/Keras is imported inside the functions, so importing this module stays cheap.

The 2x nearest upsamplings of the top-down path are built as CONCATENATION(x, x, x, x) + DEPTH_TO_SPACE, which is
exactly nearest upsampling and which XNNPACK runs: Keras's `UpSampling2D` converts to 36 small shape ops that it does
not, so the int8 graph ran as 4 delegated partitions instead of 1 (models/NOTES.md, version 6). The layer holds no
weights, so weights trained with either graph load into the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

HEATMAP = "heatmap"
LTRB = "ltrb"
OUTPUT_NAMES = (HEATMAP, LTRB)
HEATMAP_PRIOR = 0.02  # initial heatmap probability, as in CenterNet/RetinaNet bias initialisation


@dataclass(frozen=True)
class NetConfig:
    """Shape of the network: input size, output stride, channel widths and BatchNorm momentum."""

    width: int = 320
    height: int = 320
    stride: int = 4
    channels: tuple[int, int, int, int, int] = (16, 24, 40, 64, 96)  # at strides 2, 4, 8, 16, 32
    fpn: int = 48  # channels of the top-down merge
    head: int = 32  # channels of the stride-4 head
    bn_momentum: float = 0.9
    # one head block feeding both output convs instead of one block per output: 11-13 % less invoke time and the
    # same real-photo AP50, measured; not the default model's (models/NOTES.md, "A shared head")
    shared_head: bool = False

    def __post_init__(self) -> None:
        if self.stride not in (4, 8):
            raise ValueError(f"stride must be 4 or 8, got {self.stride}")
        if self.width % 32 or self.height % 32:
            raise ValueError(f"input size must be a multiple of 32, got {self.width}x{self.height}")

    @property
    def out_size(self) -> tuple[int, int]:
        """(w, h) of the output grids."""
        return self.width // self.stride, self.height // self.stride

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> NetConfig:
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return NetConfig(**d)


def nearest_up2(name: str) -> Any:
    """A Keras layer doubling height and width by nearest-neighbour repetition, as ops XNNPACK delegates."""
    from keras import layers

    class NearestUp2(layers.Layer):  # defined here so that importing this module does not import Keras
        def call(self, x: Any) -> Any:
            import tensorflow as tf

            # depth_to_space puts channel block (2i + j) at pixel (2h + i, 2w + j): four copies of x = nearest
            return tf.nn.depth_to_space(tf.concat([x, x, x, x], axis=-1), 2)

        def compute_output_shape(self, input_shape: Any) -> Any:
            b, h, w, c = input_shape
            return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)

    return NearestUp2(name=name)


def build_model(cfg: NetConfig, input_shape: tuple[int | None, int | None] | None = None) -> Any:
    """Build the Keras model. `input_shape` (h, w) overrides the config size, e.g. (None, None) for training crops."""
    import keras
    from keras import layers

    h, w = input_shape if input_shape is not None else (cfg.height, cfg.width)
    mom = cfg.bn_momentum

    def conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=mom, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x)

    def dws(x: Any, filters: int, stride: int, name: str) -> Any:
        inp = x
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
        x = layers.BatchNormalization(momentum=mom, name=f"{name}_dwbn")(x)
        x = layers.ReLU(6.0, name=f"{name}_dwrelu")(x)
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
        x = layers.BatchNormalization(momentum=mom, name=f"{name}_pwbn")(x)
        if stride == 1 and inp.shape[-1] == filters:
            return layers.Add(name=f"{name}_add")([inp, layers.ReLU(6.0, name=f"{name}_pwrelu")(x)])
        return layers.ReLU(6.0, name=f"{name}_pwrelu")(x)

    c2, c4, c8, c16, c32 = cfg.channels
    inp = keras.Input((h, w, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inp)
    x = conv_bn(x, c2, 3, 2, "stem")  # /2
    x = dws(x, c4, 2, "b4a")  # /4
    f4 = dws(x, c4, 1, "b4b")
    x = dws(f4, c8, 2, "b8a")  # /8
    f8 = dws(x, c8, 1, "b8b")
    x = dws(f8, c16, 2, "b16a")  # /16
    x = dws(x, c16, 1, "b16b")
    f16 = dws(x, c16, 1, "b16c")
    x = dws(f16, c32, 2, "b32a")  # /32
    x = dws(x, c32, 1, "b32b")
    f32 = dws(x, c32, 1, "b32c")

    p = conv_bn(f32, cfg.fpn, 1, 1, "lat32")
    p = nearest_up2("up16")(p)
    p = layers.Add(name="merge16")([p, conv_bn(f16, cfg.fpn, 1, 1, "lat16")])
    p = dws(p, cfg.fpn, 1, "td16")
    p = nearest_up2("up8")(p)
    p = layers.Add(name="merge8")([p, conv_bn(f8, cfg.fpn, 1, 1, "lat8")])
    p = dws(p, cfg.fpn, 1, "td8")
    if cfg.stride == 4:
        p = conv_bn(p, cfg.head, 1, 1, "red8")
        p = nearest_up2("up4")(p)
        p = layers.Add(name="merge4")([p, conv_bn(f4, cfg.head, 1, 1, "lat4")])
        p = dws(p, cfg.head, 1, "td4")
    shared = dws(p, p.shape[-1], 1, "head") if cfg.shared_head else None
    hm = shared if shared is not None else dws(p, p.shape[-1], 1, "hm_head")
    prior = -float(__import__("math").log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
    hm = layers.Conv2D(
        1, 1, activation="sigmoid", bias_initializer=keras.initializers.Constant(prior), name=HEATMAP
    )(hm)
    bx = shared if shared is not None else dws(p, p.shape[-1], 1, "box_head")
    bx = layers.Conv2D(4, 1, bias_initializer=keras.initializers.Constant(1.0), name="ltrb_conv")(bx)
    bx = layers.ReLU(name=LTRB)(bx)
    return keras.Model(inp, {HEATMAP: hm, LTRB: bx}, name="shelfgap")


def count_params(model: Any) -> int:
    return int(model.count_params())
