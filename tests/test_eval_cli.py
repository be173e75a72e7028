"""`shelfscout eval DATA --json --report DIR` on a small generated YOLO folder with the shipped bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import DEFAULT_BUNDLE
from edge.cli import main

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="models/shelfgap-default.bundle not built yet")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convert.synth import write_yolo_dataset

    return write_yolo_dataset(tmp_path_factory.mktemp("evaldata") / "set", 5, seed=77)


def test_eval_json_agrees_with_the_detector_and_writes_a_report(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from convert.dataset import load_yolo_folder
    from convert.evaluate import ImageDetections, evaluate
    from edge.bundle import BUILTIN_KEYS, load_public_keys, read_bundle
    from edge.detector import Detector

    code = main(["eval", str(data), "--json", "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1  # --json: one object and nothing else on stdout
    res = json.loads(out[0])
    for key in ("precision", "recall", "f1", "ap50", "tp", "fp", "fn", "ground_truth", "images", "threshold"):
        assert key in res
    assert res["images"] == 5
    assert res["tp"] + res["fn"] == res["ground_truth"] > 0

    # the same figures from the device detector directly, at the bundle's own threshold
    bundle = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))
    det = Detector(bundle, threads=1, score_threshold=0.05)
    items = load_yolo_folder(data)
    dets = []
    for it in items:
        gaps = det.detect(it.image)
        dets.append(ImageDetections(np.array([g.box for g in gaps], np.float32).reshape(-1, 4),
                                    np.array([g.score for g in gaps], np.float32)))
    want = evaluate(dets, [it.boxes for it in items], bundle.manifest.thresholds.score)
    assert res["threshold"] == pytest.approx(bundle.manifest.thresholds.score)
    assert (res["tp"], res["fp"], res["fn"]) == (want.tp, want.fp, want.fn)
    assert res["ap50"] == pytest.approx(want.ap50)

    html = (tmp_path / "rep" / "report.html").read_text()
    assert res["report"] == str(tmp_path / "rep" / "report.html")
    assert "data:image/png;base64," in html and "data:image/jpeg;base64," in html  # self-contained
    assert 'name="viewport"' in html and "AP at IoU 0.50" in html
    iv = res["ap50_interval"]  # the bootstrap interval, shown next to the AP
    assert f"95% interval over the images {iv['low']:.3f}-{iv['high']:.3f}" in html

    # the score tables: every detection at >= 0.3 lands in exactly one bin of each table, as on the page
    from convert.calibration import score_bins

    want_bins = score_bins(dets, [it.boxes for it in items], [it.image.shape[0] for it in items], 320)
    assert [b["measure"] for b in res["score_bins"]] == [b.measure for b in want_bins]
    n_kept = int(sum((d.scores >= 0.3).sum() for d in dets))
    for got, want_b in zip(res["score_bins"], want_bins, strict=True):
        assert sum(x["detections"] for x in got["bins"]) == n_kept > 0
        assert [x["detections"] for x in got["bins"]] == [x.detections for x in want_b.bins]
    assert "Where the scores mislead" in html and html.count("share that are gaps</th>") == 2
    assert html.count("data:image/png;base64,") == 3  # the PR curve and one chart per table


def test_eval_rejects_a_folder_without_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    code = main(["eval", str(tmp_path), "--json"])
    assert code != 0
    err = capsys.readouterr().err
    assert "labels/" in err and len(err.strip().splitlines()) == 1
    # a path that is not there at all (ESD looked for beside another checkout) says so, not "no images/ folder"
    assert main(["eval", str(tmp_path / "shared/data/esd/dev"), "--json"]) != 0
    err = capsys.readouterr().err
    assert "does not exist" in err and "shared/data/esd beside the checkout" in err


@pytest.mark.parametrize("line, says", [
    ("0 1.5 abc", "expected 'class cx cy w h'"),
    ("0 0.5 0.5 0.1 wide", "expected numbers"),
    ("0 1.5 0.5 0.1 0.1", "fractions of the image"),
    ("0 320 240 40 30", "pixel values?"),
])
def test_eval_names_a_malformed_label_line_in_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, says: str
) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    label = sorted((bad / "labels").glob("*.txt"))[1]
    label.write_text(label.read_text() + line + "\n")
    n = len(label.read_text().splitlines())
    assert main(["eval", str(bad), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and f"{label}:{n}: " in err and says in err and "Traceback" not in err


def test_eval_gives_a_bootstrap_interval_and_a_paired_comparison(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AP50 comes with its 95 % interval over images; --against measures a second bundle on the same images (here
    the shipped bundle against itself: a difference of exactly zero in every resample)."""
    code = main(["eval", str(data), "--json", "--bootstrap", "200", "--against", str(DEFAULT_BUNDLE)])
    res = json.loads(capsys.readouterr().out)
    assert code == 0
    iv = res["ap50_interval"]
    assert iv["low"] <= round(res["ap50"], 4) <= iv["high"] and (iv["level"], iv["resamples"]) == (0.95, 200)
    against = res["against"]
    assert against["ap50"] == pytest.approx(res["ap50"]) and against["ap50_interval"] == iv
    assert against["ap50_diff"] == {"value": 0.0, "low": 0.0, "high": 0.0, "level": 0.95, "resamples": 200}
    assert against["share_a_higher"] == 0.0

    assert main(["eval", str(data), "--bootstrap", "50"]) == 0
    assert "95 % interval over images" in capsys.readouterr().out
    assert main(["eval", str(data), "--json", "--bootstrap", "0"]) == 0
    assert "ap50_interval" not in json.loads(capsys.readouterr().out)


def _pr_png(page: str) -> np.ndarray:
    """The PR-curve image embedded in a report page, RGB."""
    import base64
    import re

    import cv2

    b64 = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="precision-recall curve"', page)
    assert b64 is not None
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(b64.group(1)), np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)


def test_the_report_of_a_comparison_shows_both_models(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval --against --report: the page gives the other model's AP and the paired difference, and the PR figure
    draws a second curve in the second series colour (here the shipped bundle against itself: difference 0)."""
    from convert.report import SERIES_COLOURS

    assert main(["eval", str(data), "--json", "--bootstrap", "100", "--report", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    assert main(["eval", str(data), "--json", "--bootstrap", "100", "--against", str(DEFAULT_BUNDLE),
                 "--report", str(tmp_path / "two")]) == 0
    res = json.loads(capsys.readouterr().out)
    page = (tmp_path / "two" / "report.html").read_text()
    name = f"{res['model']['name']} v{res['model']['version']}"
    assert f"{name}: AP at IoU 0.50</th><td>{res['against']['ap50']:.3f}" in page
    assert f"AP difference, {name} minus {name}</th><td>+0.000 (95% paired interval +0.000 to +0.000" in page
    # the same model twice: no image where the two differ
    assert f"Fewer errors with {name} (0)</h3><h3>More errors with {name} (0)</h3>" in page
    single = (tmp_path / "one" / "report.html").read_text()
    assert "AP difference" not in single and "Where the two differ" not in single

    def has(img: np.ndarray, rgb: tuple[int, int, int]) -> bool:
        return bool((np.abs(img.astype(int) - rgb).sum(-1) < 30).any())

    assert has(_pr_png(page), SERIES_COLOURS[1]) and not has(_pr_png(single), SERIES_COLOURS[1])


def test_the_terminal_and_the_report_give_the_same_interval(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One `eval --against` run said "interval over images 0.411-0.471" on the terminal and 0.411-0.472 in its
    report: the terminal rounded the JSON's figures (already rounded to 4 places) again. Interval ends that round
    differently that way (0.47153 -> 0.4715 -> 0.471) now read the same in both."""
    import convert.bootstrap as bootstrap
    from convert.bootstrap import Comparison, Interval

    monkeypatch.setattr(bootstrap, "ap50_interval", lambda matched, resamples: Interval(0.44, 0.41049, 0.47153,
                                                                                          0.95, resamples))
    monkeypatch.setattr(bootstrap, "compare_ap50", lambda a, b, resamples: Comparison(
        Interval(0.0, -0.03551, 0.04653, 0.95, resamples), 0.5))
    assert main(["eval", str(data), "--bootstrap", "20", "--against", str(DEFAULT_BUNDLE),
                 "--report", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "interval over images 0.410-0.472" in out and "interval over the images 0.410-0.472" in page
    assert "paired interval -0.036 to +0.047" in out and "paired interval -0.036 to +0.047" in page


@pytest.mark.parametrize("args", [["--bootstrap", "-1"], ["--bootstrap", "0", "--against", "x.bundle"],
                                  ["--against", "missing.bundle"]])
def test_eval_refuses_a_bad_bootstrap_or_comparison(
    data: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code = main(["eval", str(data), "--json", *args])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert ("--bootstrap" in err) or ("missing.bundle" in err)


def test_only_the_gap_class_counts_when_a_folder_labels_other_things_too(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A labelling project with products boxed too: their boxes are not gaps (they were, as many as the gaps,
    in finetune and eval). classes.txt says which class is the gap; without it, class 0 is."""
    import logging
    import shutil

    from convert.dataset import load_yolo_folder

    gaps = sum(len(it.boxes) for it in load_yolo_folder(data))
    both = tmp_path / "both"
    shutil.copytree(data, both)
    for label in (both / "labels").glob("*.txt"):  # a product box in every photo, class 1
        label.write_text(label.read_text() + "1 0.5 0.5 0.2 0.2\n")
    with caplog.at_level(logging.WARNING):
        assert sum(len(it.boxes) for it in load_yolo_folder(both)) == gaps
    assert "left out 5 labelled box(es)" in caplog.text
    (both / "classes.txt").write_text("empty\nproduct\n")
    assert sum(len(it.boxes) for it in load_yolo_folder(both)) == gaps
    swapped = tmp_path / "swapped"  # the tool numbered them the other way round
    shutil.copytree(both, swapped)
    (swapped / "classes.txt").write_text("product\nGap\n")
    assert sum(len(it.boxes) for it in load_yolo_folder(swapped)) == 5
    (swapped / "classes.txt").write_text("product\nshelf\n")
    assert main(["eval", str(swapped), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "which of the classes product, shelf is an empty spot" in err and len(err.splitlines()) == 1


def test_eval_refuses_a_limit_that_leaves_no_image(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for limit in ("0", "-5"):  # 0 crashed in the bootstrap; -5 silently dropped the last five images
        assert main(["eval", str(data), "--json", "--limit", limit]) == 2
        err = capsys.readouterr().err
        assert "--limit must be a number of images, 1 or more" in err and "Traceback" not in err


def test_eval_of_frames_without_labelled_gaps_says_ap_is_not_defined(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a folder of fully stocked frames (the labels emptied): AP50 0.000 with an interval 0.000-0.000 read as a
    # model that finds nothing; what such frames measure is false alarms
    import shutil

    stocked = tmp_path / "stocked"
    shutil.copytree(data, stocked)
    for label in (stocked / "labels").glob("*.txt"):
        label.write_text("")
    assert main(["eval", str(stocked), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "0 gaps" in out and "no labelled gaps: AP50 and recall are not defined here" in out
    assert "AP50 0.000" not in out


def test_eval_json_is_strict_json_and_leaves_undefined_figures_null(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON has no Infinity or NaN (JavaScript's JSON.parse refuses them): the open end of the last height bin printed
    as Infinity. On frames without labelled gaps AP50 and recall are null, not 0.0."""
    import shutil

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    assert main(["eval", str(data), "--json", "--bootstrap", "0"]) == 0
    res = json.loads(capsys.readouterr().out, parse_constant=refuse)
    heights = [b for b in res["score_bins"] if b["measure"].startswith("box height")][0]["bins"]
    assert heights[-1]["high"] is None and res["ap50"] > 0
    stocked = tmp_path / "stocked"
    shutil.copytree(data, stocked)
    for label in (stocked / "labels").glob("*.txt"):
        label.write_text("")
    assert main(["eval", str(stocked), "--json", "--bootstrap", "0"]) == 0
    res = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert res["ap50"] is None and res["recall"] is None and res["ground_truth"] == 0


def test_folders_that_would_train_or_measure_on_wrong_labels_are_refused_in_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Each of these went through eval, finetune and the release gate with exit 0: every gap labelled with another
    class (no classes.txt), label files that match no image (a wrong labels/ folder), an image that cannot be
    read."""
    import logging
    import shutil

    def run_eval(folder: Path) -> str:
        assert main(["eval", str(folder), "--json", "--bootstrap", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and "Traceback" not in err
        return err

    renumbered = tmp_path / "renumbered"
    shutil.copytree(data, renumbered)
    for label in (renumbered / "labels").glob("*.txt"):
        label.write_text("".join("1" + line[1:] + "\n" for line in label.read_text().splitlines()))
    err = run_eval(renumbered)
    assert "none of its" in err and "classes.txt" in err

    mismatched = tmp_path / "mismatched"  # another folder's labels, or names that do not match the images'
    shutil.copytree(data, mismatched)
    for label in (mismatched / "labels").glob("*.txt"):
        label.rename(label.with_name("img-" + label.name))
    assert "labels/ holds 5 label file(s)" in run_eval(mismatched)
    one_missing = tmp_path / "one-missing"
    shutil.copytree(data, one_missing)
    sorted((one_missing / "labels").glob("*.txt"))[0].unlink()
    with caplog.at_level(logging.WARNING):
        assert main(["eval", str(one_missing), "--json", "--bootstrap", "0"]) == 0
    capsys.readouterr()
    assert "1 of 5 images have no label file" in caplog.text
    # most images without a label file is YOLO's way of listing background images: warned, not refused
    for label in sorted((one_missing / "labels").glob("*.txt"))[:3]:
        label.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["eval", str(one_missing), "--json", "--bootstrap", "0"]) == 0
    capsys.readouterr()
    assert "4 of 5 images have no label file" in caplog.text
    # every box of another class, with a classes.txt that names the gap class: frames with no gap, not a mistake
    products = tmp_path / "products"
    shutil.copytree(renumbered, products)
    (products / "classes.txt").write_text("empty\nproduct\n")
    assert main(["eval", str(products), "--json", "--bootstrap", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["ground_truth"] == 0

    corrupt = tmp_path / "corrupt"
    shutil.copytree(data, corrupt)
    (corrupt / "images" / "zz_bad.jpg").write_text("not a picture")
    assert "cannot read image" in run_eval(corrupt)


def test_segmentation_labels_are_read_as_their_bounding_boxes(tmp_path: Path) -> None:
    """Ultralytics segmentation labels (`class x1 y1 x2 y2 ...`) were read as `class cx cy w h` from their first
    four numbers: garbage boxes. A sixth value (a confidence some tools write) is not part of the box."""
    from edge.yolo import LabelError, read_yolo_boxes

    p = tmp_path / "a.txt"
    p.write_text("0 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n1 0.5 0.5 0.2 0.4 0.9\n")
    boxes, ids = read_yolo_boxes(p, 100, 200)
    np.testing.assert_allclose(boxes, [[10, 40, 30, 120], [40, 60, 60, 140]], atol=1e-4)
    assert ids.tolist() == [0, 1]
    p.write_text("0 0.1 0.2 0.3 0.2 0.3 0.6 0.1\n")  # 3.5 points
    with pytest.raises(LabelError, match="polygon"):
        read_yolo_boxes(p, 100, 200)


def test_finetune_and_the_release_gate_refuse_frames_without_labelled_gaps(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fully stocked frames teach no gap and measure none: finetune signed a bundle from them (held-out AP50 0.000
    against 0.000, exit 0) and the release gate passed it."""
    import shutil

    from edge.bundle import generate_keypair

    stocked = tmp_path / "stocked"
    shutil.copytree(data, stocked)
    for label in (stocked / "labels").glob("*.txt"):
        label.write_text("")
    assert main(["finetune", str(stocked), "--out", str(tmp_path / "ft.bundle"), "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the training share" in err and "no labelled gap" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ft.bundle").exists()
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    assert main(["release", str(DEFAULT_BUNDLE), "--key", str(tmp_path / "k.key"), "--url", "https://m.example/",
                 "--keys", str(DEFAULT_BUNDLE.parent / "keys"), "--gate", str(stocked),
                 "-o", str(tmp_path / "rel.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no labelled gap" in err and not (tmp_path / "rel.json").exists()


def test_a_lone_class_not_named_like_a_gap_is_taken_as_the_gap_with_a_warning(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import shutil

    from convert.dataset import load_yolo_folder

    one = tmp_path / "one"
    shutil.copytree(data, one)
    (one / "classes.txt").write_text("product\n")
    with caplog.at_level(logging.WARNING):
        assert sum(len(it.boxes) for it in load_yolo_folder(one)) > 0
    assert "names one class, 'product', and it is not named like an empty spot" in caplog.text
    caplog.clear()
    (one / "classes.txt").write_text("empty\n")
    with caplog.at_level(logging.WARNING):
        load_yolo_folder(one)
    assert "names one class" not in caplog.text


def test_eval_into_a_reader_that_goes_away_exits_quietly(data: Path) -> None:
    """`shelfscout eval DATA --json | head -c 20` ended in a BrokenPipeError traceback (contract audit, nit):
    every command's output into a closed pipe ends quietly now, with exit 1."""
    import os
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)  # the reader has gone before the results come: every write to the pipe fails (EPIPE)
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "eval", str(data), "--json"], stdout=w,
                            stderr=subprocess.PIPE, text=True)
    os.close(w)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1 and "Traceback" not in err and "BrokenPipeError" not in err, err
