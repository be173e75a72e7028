"""The shipped default bundle: its golden vectors reproduce through the device Detector, and it finds drawn gaps."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, GOLDEN, load_public_keys, read_bundle

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="models/shelfgap-default.bundle not built yet")


@pytest.fixture(scope="module")
def detector():  # type: ignore[no-untyped-def]
    from edge.detector import Detector

    return Detector(read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS])), threads=2)


def test_manifest_describes_the_model(detector) -> None:  # type: ignore[no-untyped-def]
    m = detector.manifest
    assert m.output.decoding == "gap-heatmap" and m.output.stride in (4, 8)
    assert sorted(t.name for t in m.output.tensors) == ["heatmap", "ltrb"]
    assert (m.input.dtype, m.input.scale, m.input.zero_point) == ("int8", 1.0, -128)  # pixel p goes in as p - 128
    assert 0.0 < m.thresholds.score < 1.0
    assert "synthetic-val" in m.metrics["sets"]


def test_golden_vectors_reproduce(detector) -> None:  # type: ignore[no-untyped-def]
    res = detector.check_golden()
    assert res.ok, res.detail
    assert res.max_abs_diff <= 2


def test_golden_detections_match_the_stored_outputs(detector) -> None:  # type: ignore[no-untyped-def]
    """Decoding the stored raw outputs and the live ones gives the same boxes (IoU > 0.9), like a golden CSV."""
    from convert.evaluate import iou_matrix
    from edge.decoders import DECODERS

    with np.load(io.BytesIO(detector.bundle.members[GOLDEN])) as z:
        golden = {k: z[k] for k in z.files}
    decode = DECODERS["gap-heatmap"]
    outs = detector._interpreter.get_output_details()  # scale/zero point of each output, in manifest order
    n_compared = 0
    for i, img in enumerate(golden["input_0"]):
        stored = {}
        for spec, d in zip(detector.manifest.output.tensors, outs, strict=True):
            scale, zp = d["quantization"]
            stored[spec.name] = (golden[f"output_{spec.name}"][i].astype(np.float32) - zp) * scale
            stored[spec.name] = stored[spec.name].reshape(spec.shape)
        want_b, _ = decode(stored, detector.manifest, detector.score_threshold)
        gaps = detector.detect(np.ascontiguousarray(img))
        got_b = np.array([g.box for g in gaps], np.float32).reshape(-1, 4)
        assert len(got_b) == len(want_b)
        if len(want_b):
            assert iou_matrix(want_b, got_b).max(axis=1).min() > 0.9
            n_compared += len(want_b)
    assert n_compared > 0  # the golden images do contain detected gaps


def test_finds_most_gaps_on_generated_shelves(detector) -> None:  # type: ignore[no-untyped-def]
    from convert.evaluate import ImageDetections, evaluate
    from convert.synth import make_shelf_image

    rng = np.random.default_rng(12345)
    dets, gts = [], []
    for _ in range(6):
        s = make_shelf_image(rng, 416, 416)
        gaps = detector.detect(s.image)
        dets.append(ImageDetections(np.array([g.box for g in gaps], np.float32).reshape(-1, 4),
                                    np.array([g.score for g in gaps], np.float32)))
        gts.append(s.boxes)
    r = evaluate(dets, gts, detector.score_threshold)
    print(f"6 generated shelves: {r.ground_truth} gaps, recall {r.recall:.2f}, precision {r.precision:.2f}")
    assert r.ground_truth > 0
    assert r.recall >= 0.5 and r.precision >= 0.5


def test_xnnpack_runs_the_whole_graph(detector) -> None:  # type: ignore[no-untyped-def]
    """One delegated partition: no op of the shipped graph falls back to the single-threaded reference kernels."""
    pytest.importorskip("ai_edge_litert")
    rt = detector.runtime
    assert rt.xnnpack and rt.delegated_partitions == 1
    assert rt.heavy_ops == rt.heavy_ops_delegated


def test_golden_vectors_pass_on_the_runtimes_builtin_kernels_and_still_catch_a_wrong_output() -> None:
    """A cart without XNNPACK (tflite-runtime on a 32-bit OS, or XNNPACK failing to start) runs the built-in int8
    kernels, which round differently from the XNNPACK kernels that made the golden outputs: up to 18 steps apart
    here. The check must still pass there (or every update would be refused as a golden mismatch) and still refuse
    outputs that belong to another input."""
    from edge.bundle import Bundle
    from edge.detector import GOLDEN_TOLERANCE_STEPS, Detector

    bundle = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))
    builtin = Detector(bundle, threads=1, use_xnnpack=False)
    assert builtin.kernels == "builtin"
    res = builtin.check_golden()
    assert res.ok, res.detail
    assert res.max_abs_diff > GOLDEN_TOLERANCE_STEPS, "the built-in kernels gave XNNPACK's bits: nothing tested"
    assert "made on xnnpack kernels, run here on builtin ones" in res.detail and "within" in res.detail

    with np.load(io.BytesIO(bundle.members[GOLDEN])) as z:
        arrays = {k: z[k] for k in z.files}
    for k in [k for k in arrays if k.startswith("output_")]:
        arrays[k] = arrays[k][::-1].copy()  # the outputs of the other golden input
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    swapped = Bundle(bundle.manifest, bundle.manifest_bytes, {**bundle.members, GOLDEN: buf.getvalue()}, None, "t")
    res = Detector(swapped, threads=1, use_xnnpack=False).check_golden()
    assert not res.ok and "OUTSIDE the tolerance for other kernels" in res.detail, res.detail
