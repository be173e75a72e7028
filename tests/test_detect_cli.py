"""`shelfscout detect`, `model inspect|verify` and `bench` as a user runs them: a subprocess, real int8 models,
generated shelf images and a real video file."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.bundle import DEFAULT_BUNDLE, GOLDEN, MODEL, load_private_key, read_bundle, write_bundle
from tests.test_detector_models import TF_WARNINGS, cached_tiny_bundle

pytestmark = TF_WARNINGS
REPO = Path(__file__).resolve().parent.parent


def shelfscout(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, as the console script runs it (`-m edge.cli` would duplicate edge.cli's classes)."""
    code = "import sys; from edge.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return cached_tiny_bundle(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated shelf photos (640x480 and 416x416) in a folder, and a 3-frame 320x240 video."""
    from convert.synth import make_shelf_image

    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(5)
    (d / "photos").mkdir()
    for name, (w, h) in (("a.jpg", (640, 480)), ("b.png", (416, 416))):
        img = make_shelf_image(rng, width=w, height=h).image
        assert cv2.imwrite(str(d / "photos" / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (d / "photos" / "notes.txt").write_text("not an image, ignored")
    vw = cv2.VideoWriter(str(d / "pass.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 10, (320, 240))
    for _ in range(3):
        vw.write(cv2.cvtColor(make_shelf_image(rng, width=320, height=240).image, cv2.COLOR_RGB2BGR))
    vw.release()
    return d


def _check_json_lines(stdout: str, expected: list[tuple[str, int, int]]) -> list[dict]:
    lines = stdout.splitlines()
    assert len(lines) == len(expected), stdout
    rows = [json.loads(line) for line in lines]  # every stdout line is one JSON object, nothing else
    for row, (name, w, h) in zip(rows, expected, strict=True):
        assert set(row) == {"image", "width", "height", "gaps"}
        assert (row["image"], row["width"], row["height"]) == (name, w, h)
        for g in row["gaps"]:
            assert set(g) == {"box", "score"}
            x0, y0, x1, y1 = g["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert 0 < g["score"] <= 1
    return rows


def test_detect_json_on_a_folder_and_a_video(tiny: tuple[Path, Path, Path], media: Path, tmp_path: Path) -> None:
    bundle, keys, _ = tiny
    ann = tmp_path / "annotated"
    r = shelfscout("detect", media / "photos", media / "pass.mp4", "--model", bundle, "--keys", keys, "--json",
                   "--threshold", "0.25", "--annotate", ann)
    assert r.returncode == 0, r.stderr
    video = str(media / "pass.mp4")
    rows = _check_json_lines(r.stdout, [(str(media / "photos" / "a.jpg"), 640, 480),
                                        (str(media / "photos" / "b.png"), 416, 416),
                                        (f"{video}#0", 320, 240), (f"{video}#1", 320, 240), (f"{video}#2", 320, 240)])
    assert sum(len(row["gaps"]) for row in rows) > 0  # the tiny model finds something at 0.25
    written = sorted(p.name for p in ann.iterdir())
    assert written == ["a.jpg", "b.jpg", "pass_f000000.jpg", "pass_f000001.jpg", "pass_f000002.jpg"]
    first = cv2.imread(str(ann / "a.jpg"))
    assert first is not None and first.shape == (480, 640, 3)


def test_detect_json_with_the_default_model(media: Path) -> None:
    if not DEFAULT_BUNDLE.exists():
        pytest.skip(f"the default bundle {DEFAULT_BUNDLE} has not landed yet (model helper)")
    r = shelfscout("detect", media / "photos" / "a.jpg", media / "pass.mp4", "--json")
    assert r.returncode == 0, r.stderr
    video = str(media / "pass.mp4")
    _check_json_lines(r.stdout, [(str(media / "photos" / "a.jpg"), 640, 480), (f"{video}#0", 320, 240),
                                 (f"{video}#1", 320, 240), (f"{video}#2", 320, 240)])


def test_detect_errors_are_one_line(tiny: tuple[Path, Path, Path], media: Path, tmp_path: Path) -> None:
    bundle, keys, _ = tiny
    r = shelfscout("detect", tmp_path / "nope.jpg", "--model", bundle, "--keys", keys, "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == f"shelfscout detect: error: {tmp_path / 'nope.jpg'}: no such file or folder"
    # signed by a key the device does not trust: refused, unless the loud development flag is given
    r = shelfscout("detect", media / "photos" / "a.jpg", "--model", bundle, "--json")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert re.search(r"signature does not verify|no trusted keys", r.stderr)  # (built-in keys may not exist yet)
    r = shelfscout("detect", media / "photos" / "a.jpg", "--model", bundle, "--json", "--dev-allow-unsigned-models")
    assert r.returncode == 0 and "UNSIGNED" in r.stderr
    _check_json_lines(r.stdout, [(str(media / "photos" / "a.jpg"), 640, 480)])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    r = shelfscout("detect", broken, media / "photos" / "a.jpg", "--model", bundle, "--keys", keys, "--json")
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 1  # the good image still ran
    assert f"{broken}: not a readable image" in r.stderr


def test_model_verify_and_inspect(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle, keys, key = tiny
    r = shelfscout("model", "verify", bundle, "--keys", keys)
    assert r.returncode == 0, r.stderr
    assert "golden vectors: ok" in r.stdout and "verified" in r.stdout

    # golden outputs edited and the bundle re-signed: signature and hashes pass, the golden check fails
    b = read_bundle(bundle, None, allow_unsigned=True)
    with np.load(io.BytesIO(b.members[GOLDEN])) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["output_predictions"] = (arrays["output_predictions"].astype(np.int16) + 9).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    drifted = tmp_path / "drifted.bundle"
    write_bundle(drifted, b.manifest, {MODEL: b.members[MODEL], GOLDEN: buf.getvalue()}, load_private_key(key))
    r = shelfscout("model", "verify", drifted, "--keys", keys)
    assert r.returncode == 1 and "golden vectors" in r.stderr and "OUTSIDE" in r.stderr

    # one flipped byte in the model: the hash check fails
    raw = bytearray(bundle.read_bytes())
    at = raw.find(b.members[MODEL][:64]) + 200
    raw[at] ^= 0x01
    flipped = tmp_path / "flipped.bundle"
    flipped.write_bytes(bytes(raw))
    r = shelfscout("model", "verify", flipped, "--keys", keys)
    assert r.returncode == 2 and "sha256 of model.tflite" in r.stderr

    r = shelfscout("model", "inspect", bundle, "--keys", keys, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["signature"] == "valid, signed by signer.pub"
    assert info["decoding"] == "yolo" and info["runtime"]["name"] == "ai-edge-litert" and info["runtime"]["xnnpack"]
    assert [row["name"] for row in info["model_io"] if row["kind"] == "output"] == ["predictions"]
    r = shelfscout("model", "inspect", bundle)
    assert r.returncode == 0 and "NOT VERIFIED" in r.stdout


def test_bench_json_is_one_object_with_the_contract_keys(tiny: tuple[Path, Path, Path]) -> None:
    bundle, keys, _ = tiny
    r = shelfscout("bench", "--json", "--model", bundle, "--keys", keys, "--frames", "20", "--distinct", "4",
                   "--repeat", "2")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    out = json.loads(line)
    for k in ("invoke_fps", "pipeline_fps", "naive_fps", "peak_rss_mb", "runtime", "xnnpack", "stages_ms"):
        assert k in out
    assert out["invoke_fps"] > 0 and out["naive_fps"] > 0 and out["peak_rss_mb"] > 0
    assert out["runtime"].startswith("ai-edge-litert") and out["xnnpack"] is True
    assert out["frame_size"] == [640, 480] and out["frames"] == 20
    for stage in ("preprocess", "invoke", "decode"):
        assert out["stages_ms"][stage]["p50"] <= out["stages_ms"][stage]["p95"]
    # --repeat 2: both runs listed, each figure the median of the runs' figures
    assert out["repeat"] == 2 and len(out["runs"]) == 2
    for key in ("invoke_fps", "naive_fps", "detector_fps", "pipeline_fps"):
        vals = [run[key] for run in out["runs"]]
        assert out[key] == pytest.approx(sum(vals) / 2, abs=0.01)
    # the ratios and the pipeline's own stage percentiles, explained in the same object
    assert out["pipeline_fps"] > 0
    # the note says where the pipeline's threads ran (the tiny model runs 1 interpreter thread: pinned on >= 2 cores)
    cores = len(os.sched_getaffinity(0))
    assert out["note"].startswith("inference thread pinned to cores" if cores >= 2 else "threads not pinned")
    # each ratio is the median of the runs' own ratios (a run compares figures measured in the same minute)
    for run in out["runs"]:
        assert run["pipeline_over_invoke"] == pytest.approx(run["pipeline_fps"] / run["invoke_fps"], abs=0.001)
        assert run["pipeline_over_naive"] == pytest.approx(run["pipeline_fps"] / run["naive_fps"], abs=0.001)
    for key in ("pipeline_over_invoke", "pipeline_over_naive"):
        assert out[key] == pytest.approx(sum(run[key] for run in out["runs"]) / 2, abs=0.001)
        assert out["ratios"][key] == out[key]
    for stage in ("preprocess", "invoke", "decode", "track", "total"):
        q = out["pipeline_stages_ms"][stage]
        assert 0 <= q["p50"] <= q["p95"]
    for key in ("invoke_fps", "naive_fps", "pipeline_fps", "pipeline_over_invoke", "pipeline_over_naive",
                "pipeline_stages_ms"):
        assert len(out["explain"][key]) > 40
    r = shelfscout("bench", "--json", "--model", bundle, "--keys", keys, "--repeat", "0")
    assert r.returncode == 2 and "--repeat must be at least 1" in r.stderr
    print("bench (tiny model):", line)

def test_detect_output_into_a_closed_pipe_is_quiet(tiny: tuple[Path, Path, Path], media: Path) -> None:
    """`shelfscout detect ... --json | head -2`: the reader goes away; no BrokenPipeError traceback.

    The read end is closed before the child writes anything, so its first write is the broken one, every run.
    """
    import os

    bundle, keys, _ = tiny
    code = "import sys; from edge.cli import main; sys.exit(main(sys.argv[1:]))"
    for extra in (["--json"], []):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            p = subprocess.run([sys.executable, "-c", code, "detect", str(media / "pass.mp4"), "--model", str(bundle),
                                "--keys", str(keys), *extra], stdout=write_end, stderr=subprocess.PIPE, text=True,
                               timeout=120, cwd=REPO)
        finally:
            os.close(write_end)
        assert p.returncode == 1, p.stderr
        assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr and "Exception ignored" not in p.stderr


def test_detect_skips_unreadable_files_in_a_folder(tiny: tuple[Path, Path, Path], media: Path, tmp_path: Path) -> None:
    bundle, keys, _ = tiny
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = cv2.imread(str(media / "photos" / "a.jpg"))
    assert cv2.imwrite(str(folder / "1.jpg"), good) and cv2.imwrite(str(folder / "4.png"), good)
    (folder / "2.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "3.jpg").write_bytes(b"")
    (folder / "5.mp4").write_bytes(b"not a video")
    r = shelfscout("detect", folder, "--model", bundle, "--keys", keys, "--json")
    assert r.returncode == 1, r.stderr
    _check_json_lines(r.stdout, [(str(folder / "1.jpg"), 640, 480), (str(folder / "4.png"), 640, 480)])
    warnings = [line for line in r.stderr.splitlines() if line.startswith("shelfscout detect: warning: skipped ")]
    assert [w.split("skipped ", 1)[1].split(":")[0] for w in warnings] == [
        str(folder / "2.jpg"), str(folder / "3.jpg"), str(folder / "5.mp4")]
    assert "Traceback" not in r.stderr
    # every input readable: exit 0; the exit codes are documented in --help
    r = shelfscout("detect", folder / "1.jpg", folder / "4.png", "--model", bundle, "--keys", keys)
    assert r.returncode == 0 and "warning" not in r.stderr and len(r.stdout.splitlines()) == 2
    r = shelfscout("detect", "--help")
    assert r.returncode == 0 and "exit status" in r.stdout and "skipped" in r.stdout


def test_model_commands_reject_a_non_bundle_in_one_line(tmp_path: Path) -> None:
    toml = tmp_path / "some.toml"
    toml.write_text("[mqtt]\nurl = 'mqtt://localhost'\n")
    for cmd in (("model", "verify", toml), ("model", "inspect", toml), ("detect", toml, "--model", toml)):
        r = shelfscout(*cmd)
        assert r.returncode == 2 and r.stdout == ""
        lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("INFO: ")]
        assert lines == [f"shelfscout {cmd[0]}: error: {toml} is not a model bundle "
                         "(neither a tar archive nor a bundle folder)"], r.stderr


def test_model_verify_prints_one_line_per_check(tiny: tuple[Path, Path, Path]) -> None:
    bundle, keys, _ = tiny
    r = shelfscout("model", "verify", bundle, "--keys", keys)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:4]] == ["signature", "hashes", "I/O signature", "golden vectors"]
    assert lines[0] == "signature: ok (key signer.pub)"
    assert lines[1] == "hashes: ok (2 files: golden.npz, model.tflite)"
    assert lines[2].startswith("I/O signature: ok (input ") and "yolo decoding" in lines[2]
    assert lines[3].startswith("golden vectors: ok (") and "max diff" in lines[3]
    assert lines[4].startswith("tiny-yolo-uint8 v3: verified on ai-edge-litert ")


def test_model_inspect_shows_a_metrics_table_and_the_runtime(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from convert.wrap import wrap_external_model

    bundle, keys, key = tiny
    sets = {
        "synthetic-val": {"int8": {"ap50": 0.8827, "precision": 0.8518, "recall": 0.8331, "f1": 0.8424, "images": 300},
                          "float": {"ap50": 0.8855, "precision": 0.8521, "recall": 0.829, "f1": 0.8404, "images": 300}},
        "esd-dev": {"float": {"ap50": 0.4155, "precision": 0.4897, "recall": 0.4574, "f1": 0.473},
                    "int8": {"ap50": 0.4141, "precision": 0.4844, "recall": 0.4635, "f1": 0.4737}},
    }
    with_metrics = tmp_path / "metrics.bundle"
    wrap_external_model(bundle.parent / "tiny-yolo-uint8.tflite", "yolo", "tiny-metrics", 4, ["empty"], with_metrics,
                        key, metrics={"sets": sets, "params": 1234, "parity": {"max_abs_diff": 0.05}})
    r = shelfscout("model", "inspect", with_metrics, "--keys", keys)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index("  metrics")
    assert lines[at + 1].split() == ["data", "set", "model", "AP50", "P", "R", "F1"]
    assert sorted(ln.split() for ln in lines[at + 2:at + 6]) == [  # int8 before float within a set
        ["esd-dev", "float", "0.415", "0.490", "0.457", "0.473"],
        ["esd-dev", "int8", "0.414", "0.484", "0.464", "0.474"],
        ["synthetic-val", "float", "0.885", "0.852", "0.829", "0.840", "(300", "images)"],
        ["synthetic-val", "int8", "0.883", "0.852", "0.833", "0.842", "(300", "images)"],
    ]
    assert [ln.split()[1] for ln in lines[at + 2:at + 4]] == ["int8", "float"]
    assert "    params: 1234" in lines and "    parity: max_abs_diff 0.05" in lines
    assert "{" not in r.stdout  # no raw Python dicts
    (runtime,) = [ln for ln in lines if ln.startswith("  runtime ")]
    assert re.match(r"  runtime    ai-edge-litert \S+, XNNPACK yes \(\d+/\d+ conv ops", runtime), runtime
    r = shelfscout("model", "inspect", with_metrics, "--keys", keys, "--json")
    info = json.loads(r.stdout)
    assert info["metrics"]["sets"] == sets and info["runtime"]["xnnpack"] is True
    assert info["runtime"]["name"] == "ai-edge-litert" and info["runtime"]["version"]


def test_prelabel_turns_a_recorded_pass_into_a_yolo_folder_and_keeps_corrected_labels(tmp_path: Path) -> None:
    """A cart pass (a real .mp4 rendered by the generator) and a photo through the default int8 model: every 10th
    frame and its gaps become a YOLO folder that finetune and eval read; a second run keeps what a person corrected."""
    from convert.cartpass import make_aisle, render_cart_pass
    from convert.dataset import load_yolo_folder
    from convert.synth import make_shelf_image
    from edge.yolo import read_yolo_labels

    cp = render_cart_pass(make_aisle(np.random.default_rng(3), length_px=1600, n_gaps=3), tmp_path / "pass.mp4",
                          speed_px_per_frame=24.0)
    photo = tmp_path / "shelf.png"
    assert cv2.imwrite(str(photo), cv2.cvtColor(make_shelf_image(np.random.default_rng(4)).image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "frames"
    r = shelfscout("detect", cp.path, photo, "--every", "10", "--prelabel", out, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    picked = list(range(0, cp.frames, 10))
    assert cp.frames > 30 and [row["image"] for row in rows] == [f"{cp.path}#{k}" for k in picked] + [str(photo)]
    assert sum(len(row["gaps"]) for row in rows) >= 3  # the model found gaps to pre-label

    assert (out / "classes.txt").read_text() == "gap\n"
    items = {it.path.name: it for it in load_yolo_folder(out)}  # what finetune and eval read
    names = [f"pass_f{k:06d}.jpg" for k in picked] + ["shelf.png"]
    assert sorted(items) == sorted(names)
    for name, row in zip(names, rows, strict=True):
        want = np.array([g["box"] for g in row["gaps"]], np.float32).reshape(-1, 4)
        np.testing.assert_allclose(items[name].boxes, want, atol=0.1)  # --json rounds to 0.1 px
    assert (out / "images" / "shelf.png").read_bytes() == photo.read_bytes()  # a photo is copied as it is
    cap = cv2.VideoCapture(str(cp.path))
    for k in range(picked[-1] + 1):
        ok, bgr = cap.read()
        assert ok
        if k in picked:  # each frame image is that frame of the video, JPEG-encoded
            diff = np.abs(items[f"pass_f{k:06d}.jpg"].image.astype(np.int16) - bgr[..., ::-1].astype(np.int16))
            assert diff.mean() < 3.0
    cap.release()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    corrected = out / "labels" / "pass_f000010.txt"
    corrected.write_text("0 0.500000 0.500000 0.200000 0.100000\n")  # a person fixed this frame's labels
    (out / "labels" / "pass_f000020.txt").unlink()  # and this one was never labelled
    r = shelfscout("detect", cp.path, photo, "--every", "10", "--prelabel", out)
    assert r.returncode == 0, r.stderr
    assert corrected.read_text() == "0 0.500000 0.500000 0.200000 0.100000\n"
    again = read_yolo_labels(out / "labels" / "pass_f000020.txt", *cp.frame_size)
    np.testing.assert_allclose(again, items["pass_f000020.jpg"].boxes, atol=0.1)  # the unlabelled frame, written again
    assert "wrote 1 images/frames" in r.stderr and f"kept {len(names) - 1} existing label files" in r.stderr

    # another day's recording with the same file name: its own frames, under names of their own
    other = tmp_path / "day2" / "pass.mp4"
    other.parent.mkdir()
    cp2 = render_cart_pass(make_aisle(np.random.default_rng(5), length_px=1600, n_gaps=2), other,
                           speed_px_per_frame=24.0)
    r = shelfscout("detect", cp2.path, "--every", "10", "--prelabel", out)
    assert r.returncode == 0, r.stderr
    picked2 = list(range(0, cp2.frames, 10))
    assert f"wrote {len(picked2)} images/frames" in r.stderr
    assert corrected.read_text() == "0 0.500000 0.500000 0.200000 0.100000\n"  # the first day's stay as they were
    assert sorted(p.name for p in (out / "images").glob("pass_f*_2.jpg")) == [f"pass_f{k:06d}_2.jpg" for k in picked2]
    r = shelfscout("detect", cp2.path, "--every", "10", "--prelabel", out)  # and again: nothing new
    assert r.returncode == 0 and "wrote 0 images/frames" in r.stderr, r.stderr

    r = shelfscout("detect", cp.path, "--every", "0", "--prelabel", out)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "shelfscout detect: error: --every must be at least 1, got 0"
    r = shelfscout("detect", cp.path, "--prelabel", photo)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"shelfscout detect: error: --prelabel {photo}: not a folder"


def test_spacing_runs_a_frame_per_stretch_of_shelf_not_per_second_of_standing_still(tmp_path: Path) -> None:
    """A recorded stop-and-go pass (a real .mp4 cut from a generated aisle): the cart stands still for 2 s, moves a
    frame width in 40 frames, and stands still again. `--spacing 0.25` runs the first frame and then one frame per
    quarter frame width travelled, by the service's own motion estimate: nothing while standing."""
    from convert.cartpass import make_aisle

    aisle = make_aisle(np.random.default_rng(5), length_px=1400, n_gaps=3)
    xs = [0] * 30 + [16 * (k + 1) for k in range(40)] + [640] * 30  # the view's left edge in aisle pixels
    video = tmp_path / "stop-and-go.mp4"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 15.0, (640, 480))
    for x in xs:
        vw.write(cv2.cvtColor(np.ascontiguousarray(aisle.image[:, x : x + 640]), cv2.COLOR_RGB2BGR))
    vw.release()

    r = shelfscout("detect", video, "--spacing", "0.25", "--json")
    assert r.returncode == 0, r.stderr
    frames = [int(json.loads(line)["image"].rsplit("#", 1)[1]) for line in r.stdout.splitlines()]
    assert frames[0] == 0 and all(30 <= k < 70 for k in frames[1:])  # none while standing still
    assert len(frames) in (4, 5)  # 640 px of travel, a frame per 160 px (5 only if the estimate hits 160 exactly)
    for a, b in zip(frames, frames[1:], strict=False):
        assert 160 <= xs[b] - xs[a] < 160 + 2 * 16  # at the first frame past a quarter width (1 frame of slack)

    r = shelfscout("detect", video, "--spacing", "0")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "shelfscout detect: error: --spacing is a share of the frame between 0 and 1 (e.g. 0.5), got 0.0")


def test_bundle_reads_the_class_names_an_ultralytics_export_carries(tiny: tuple[Path, Path, Path],
                                                                    tmp_path: Path) -> None:
    """An Ultralytics .tflite carries its class names (a zip with metadata.json appended, as its exporter writes
    it). `bundle --decoding yolo` took 'empty' for every model without --labels; it reads them now, and says so
    when --labels disagree with them."""
    import zipfile

    bundle, keys, key = tiny
    model = tmp_path / "best_int8.tflite"
    model.write_bytes((bundle.parent / "tiny-yolo-uint8.tflite").read_bytes())
    with zipfile.ZipFile(model, "a", zipfile.ZIP_DEFLATED) as zf:  # what Ultralytics' _add_tflite_metadata does
        zf.writestr("metadata.json", json.dumps({"task": "detect", "imgsz": [64, 64], "names": {"0": "Out-Of-Stock"}}))
    out = tmp_path / "m.bundle"
    r = shelfscout("bundle", model, "--decoding", "yolo", "--out", out, "--key", key, "--score", "0.3")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gap_labels"] == ["Out-Of-Stock"]
    assert "labels from the model's Ultralytics metadata: Out-Of-Stock" in r.stderr
    assert read_bundle(out, {}, allow_unsigned=True).manifest.labels == ("Out-Of-Stock",)
    r = shelfscout("bundle", model, "--decoding", "yolo", "--out", tmp_path / "n.bundle", "--key", key, "--score",
                   "0.3", "--labels", "empty")
    assert r.returncode == 0 and "differ from the class names the model carries (Out-Of-Stock)" in r.stderr


def test_annotated_labels_stay_whole_at_the_picture_edges() -> None:
    """A gap at the right edge or the top keeps its whole 'gap 0.83' tag inside the picture (was cut off)."""
    from edge.commands.detect import annotate
    from edge.types import Gap

    img = np.full((480, 640, 3), 128, np.uint8)

    def tag_pixels(gap: Gap) -> int:
        above = annotate(img, [gap])[:round(gap.y0) - 2]  # the rows above the box and its outline: the tag
        return int(np.count_nonzero(np.all(above == (0, 0, 255), axis=2)))

    middle = tag_pixels(Gap(300, 100, 319, 130, 0.83))
    assert middle > 100
    assert tag_pixels(Gap(620, 100, 639, 130, 0.83)) == middle
