"""`shelfscout train` end to end on a few generated shelves: a signed, loadable bundle and one JSON report."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main


def _base_and_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[str], Path, Path]:
    """A signing key, a tiny trained base model and ten generated frames standing in for a user's: the start of
    every fine-tuning test. Returns (key arguments, frames folder, base float weights)."""
    from convert.build_default import synth_folder
    from edge.bundle import generate_keypair

    generate_keypair(tmp_path / "k.key", tmp_path / "keys" / "k.pub")
    key = ["--key", str(tmp_path / "k.key")]
    assert main(["train", str(tmp_path / "base.bundle"), "--synth", "8", "--synth-val", "4", "--steps", "2",
                 "--batch", "2", "--size", "64", "--crop", "64", "--stride", "8", "--work", str(tmp_path / "w0"),
                 "--quiet", *key]) == 0
    capsys.readouterr()
    data = synth_folder(tmp_path / "frames", 10, seed=5, workers=1, progress=False)  # stands in for a user's frames
    return key, data, tmp_path / "w0" / "float" / "model.weights.h5"


@pytest.mark.slow
def test_train_writes_a_signed_bundle_that_the_device_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.bundle import generate_keypair, load_public_keys, read_bundle
    from edge.detector import Detector

    generate_keypair(tmp_path / "k.key", tmp_path / "keys" / "k.pub")
    out = tmp_path / "small.bundle"
    code = main(["train", str(out), "--synth", "12", "--synth-val", "4", "--steps", "4", "--batch", "2",
                 "--size", "64", "--crop", "64", "--stride", "8", "--key", str(tmp_path / "k.key"),
                 "--work", str(tmp_path / "work"), "--quiet", "--version", "3", "--shared-head",
                 "--randconv", "0.5"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the report and nothing else
    assert report["bundle"] == str(out) and report["train_images"] == 12
    sets = report["metrics"]["sets"]["synthetic-val"]
    assert set(sets) == {"float", "int8"} and 0.0 <= sets["int8"]["ap50"] <= 1.0
    assert (tmp_path / "work" / "parity.md").exists()
    b = read_bundle(out, load_public_keys([tmp_path / "keys"]))
    assert (b.manifest.version, b.manifest.input.width, b.manifest.output.stride) == (3, 64, 8)
    saved = json.loads((tmp_path / "work" / "float" / "net.json").read_text())
    assert saved["net"]["shared_head"] is True and saved["train"]["aug"]["randconv"] == 0.5
    assert saved["train"]["aug"]["mosaic"] == 0.0  # train's default: never measured on generated shelves
    assert report["metrics"]["threshold_rule"] == "best F0.5"
    assert Detector(b, threads=1).check_golden().ok


@pytest.mark.slow
def test_finetune_at_a_new_input_size_writes_a_bundle_and_measures_before_and_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`finetune DATA --from W --size N`: fully-convolutional weights carry over to a new input size; the report
    gives the split and the held-out figures; a size that is not a multiple of 32 is a one-line error."""
    from convert.commands import FINETUNE_MOSAIC, PEAK_LR
    from edge.bundle import load_public_keys, read_bundle
    from edge.detector import Detector

    key, data, weights = _base_and_frames(tmp_path, capsys)
    out = tmp_path / "store.bundle"
    code = main(["finetune", str(data), "--out", str(out), "--from", str(weights), "--size", "96", "--steps", "3",
                 "--batch", "2", "--val-share", "0.3", "--work", str(tmp_path / "w1"), "--quiet", "--threshold-beta",
                 "1", "--randconv", "0.5", "--crop", "64", "--report", str(tmp_path / "rep"), *key])
    assert code == 0
    said = capsys.readouterr()
    report = json.loads(said.out)
    assert report["split"] == {"train": 7, "heldout": 3, "seed": 0}
    assert f"signed with {tmp_path / 'k.key'}; carts run the bundle once k.pub is in their" in said.err
    saved = json.loads((tmp_path / "w1" / "float" / "net.json").read_text())["train"]
    assert saved["aug"]["randconv"] == 0.5 and saved["crop"] == 64
    assert saved["aug"]["mosaic"] == FINETUNE_MOSAIC == 0.5  # finetune's own default (measured, models/NOTES.md)
    assert saved["lr"] == PEAK_LR == 3e-3  # from the default weights as from scratch (measured, models/NOTES.md)
    held = report["metrics"]["sets"]["frames-heldout"]
    assert report["metrics"]["threshold_rule"] == "best F1"
    # the best-F1 threshold on the held-out share, rounded to 2 places and kept within [0.15, 0.8] by the build
    assert report["threshold"] == pytest.approx(min(0.8, max(0.15, held["int8"]["best_f1_threshold"])), abs=0.011)
    assert held["int8"]["images"] == 3 and 0.0 <= held["int8"]["ap50"] <= 1.0
    # the threshold was chosen on these frames: the figures at a threshold chosen on the other half go beside them
    cf = held["int8"]["cross_fitted"]
    assert all(0.0 <= cf[k] <= 1.0 for k in ("precision", "recall", "f1")) and len(cf["thresholds"]) == 2
    (line,) = [x for x in said.err.splitlines() if x.startswith("at its threshold ")]
    assert f"chosen on the other half of them instead: precision {cf['precision']:.3f}" in line
    # the shipped model on the same held-out frames, and the gain with its paired bootstrap interval
    base = report["baseline"]
    assert base["model"].startswith("shelfgap-default v")
    gain = base["finetuned_minus_default"]
    assert gain["ap50_diff"]["value"] == pytest.approx(held["int8"]["ap50"] - base["ap50"], abs=2e-4)
    assert gain["ap50_diff"]["low"] <= gain["ap50_diff"]["value"] <= gain["ap50_diff"]["high"]
    # and one line says what that means for a rollout
    d = gain["ap50_diff"]
    verdict = ("better" if d["low"] > 0 else "WORSE than the shipped model: do not roll it out" if d["high"] < 0
               else "not yet distinguishable")
    (line,) = [x for x in said.err.splitlines() if x.startswith("held-out AP50 ")]
    said_figures = re.fullmatch(r"held-out AP50 (\S+) against the shipped model's (\S+) on 3 frames: (\S+), "
                                r"95 % interval (\S+) to (\S+): (.*)", line)
    assert said_figures is not None, line
    # each figure rounded once, from the unrounded value (the JSON's are rounded to 4 places on their own)
    tuned_ap, base_ap, value, low, high = (float(v) for v in said_figures.groups()[:5])
    expected = (held["int8"]["ap50"], base["ap50"], d["value"], d["low"], d["high"])
    assert (tuned_ap, base_ap, value, low, high) == pytest.approx(expected, abs=0.0006)
    assert said_figures[6].startswith(verdict)
    # 3 held-out frames decide the threshold and the verdict: said to be too few
    assert "note: the held-out share is 3 frames with " in said.err and "label more frames first" in said.err
    # --report: the held-out frames' page, the fine-tuned model's figures beside the shipped model's
    assert report["report"] == str(tmp_path / "rep" / "report.html")
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "(fine-tuned) on 3 held-out images" in page
    assert f"{base['model']} (shipped): AP at IoU 0.50</th><td>{base['ap50']:.3f}" in page
    assert f"minus {base['model']} (shipped)</th><td>{gain['ap50_diff']['value']:+.3f}" in page
    grid = page.split('<div class="grid">')[1].split("</div>")[0]
    assert 1 <= grid.count("<figure>") <= 3  # annotated held-out frames
    assert "<h2>Where the two differ</h2>" in page  # and the frames where the two models differ, side by side
    assert "<h2>Where the scores mislead</h2>" in page and "(input 96 px high)" in page  # the fine-tuned net's bins
    b = read_bundle(out, load_public_keys([tmp_path / "keys"]))
    assert (b.manifest.input.width, b.manifest.input.height, b.manifest.output.stride) == (96, 96, 8)
    assert (b.manifest.input.dtype, b.manifest.input.zero_point) == ("int8", -128)
    assert Detector(b, threads=1).check_golden().ok
    # the golden vectors are generated shelves, never the user's own frames (the bundle goes to a fleet)
    import cv2

    from convert.dataset import load_yolo_folder

    frames = [cv2.resize(it.image, (96, 96), interpolation=cv2.INTER_AREA) for it in load_yolo_folder(data)]
    inputs = np.load(io.BytesIO(b.members["golden.npz"]))["input_0"]
    assert len(inputs) == 2 and not any(np.abs(g.astype(int) - f).mean() < 8 for g in inputs for f in frames)

    code = main(["finetune", str(data), "--out", str(tmp_path / "bad.bundle"), "--from", str(weights),
                 "--val-share", "1.5", "--steps", "1", "--quiet", *key])
    assert code != 0 and "--val-share must be between 0 and 1" in capsys.readouterr().err
    code = main(["finetune", str(data), "--out", str(tmp_path / "bad.bundle"), "--from", str(weights),
                 "--size", "100", "--steps", "1", "--quiet", *key])
    assert code != 0 and "--size" in capsys.readouterr().err and not (tmp_path / "bad.bundle").exists()
    code = main(["finetune", str(data), "--out", str(tmp_path / "bad.bundle"), "--from", str(weights),
                 "--threshold-beta", "0", "--steps", "1", "--quiet", *key])
    assert code != 0 and "--threshold-beta" in capsys.readouterr().err and not (tmp_path / "bad.bundle").exists()
    code = main(["finetune", str(data), "--out", str(tmp_path / "bad.bundle"), "--from", str(weights),
                 "--randconv", "1.5", "--steps", "1", "--quiet", *key])
    assert code != 0 and "--randconv" in capsys.readouterr().err and not (tmp_path / "bad.bundle").exists()
    code = main(["finetune", str(data), "--out", str(tmp_path / "bad.bundle"), "--from", str(weights),
                 "--mosaic", "-0.5", "--steps", "1", "--quiet", *key])
    assert code != 0 and "--mosaic" in capsys.readouterr().err and not (tmp_path / "bad.bundle").exists()
    for crop in ("100", "0"):
        code = main(["finetune", str(data), "--out", str(tmp_path / "bad.bundle"), "--from", str(weights),
                     "--crop", crop, "--steps", "1", "--quiet", *key])
        assert code != 0 and "--crop" in capsys.readouterr().err and not (tmp_path / "bad.bundle").exists()


@pytest.mark.slow
def test_a_build_keeps_its_learning_curve_and_rebundles_its_weights_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float AP50 logged every eval_every steps is part of the build report, not only of the work folder, so
    `--card-only` can redraw the card's learning-curve table on a machine without that folder. And with
    $SOURCE_DATE_EPOCH set, re-bundling the same weights (`--reuse-weights`) writes the same bytes: anyone can check
    that a bundle is what its weights give."""
    from convert.build_default import BuildReport, BuildSpec, build
    from convert.model import NetConfig
    from convert.train import TrainConfig
    from edge.bundle import generate_keypair, read_bundle

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    net = NetConfig(width=64, height=64, stride=8)
    spec = BuildSpec(name="t", version=1, out_bundle=tmp_path / "t.bundle", work_dir=tmp_path / "w",
                     train=TrainConfig(net=net, steps=4, batch=2, crop=64, warmup=1), synth_train=6, synth_val=3,
                     eval_every=2, workers=1, progress=False, key_path=tmp_path / "k.key")
    report = build(spec)
    assert [p["step"] for p in report.learning_curve] == [2, 4]
    assert all(0.0 <= p["synthetic-val"] <= 1.0 for p in report.learning_curve)
    saved = json.loads((tmp_path / "w" / "build-report.json").read_text())
    assert BuildReport(**saved) == report

    again = build(replace(spec, out_bundle=tmp_path / "again.bundle", reuse_weights=True))
    assert (tmp_path / "again.bundle").read_bytes() == (tmp_path / "t.bundle").read_bytes()
    assert again.manifest_sha256 == report.manifest_sha256
    assert read_bundle(tmp_path / "t.bundle", None, allow_unsigned=True).manifest.created == "2026-09-21T14:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH"):  # before it trains or writes anything
        build(replace(spec, out_bundle=tmp_path / "bad.bundle", work_dir=tmp_path / "w2"))
    assert not (tmp_path / "bad.bundle").exists() and not (tmp_path / "w2").exists()


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_a_library_build_with_a_bad_threshold_beta_fails_before_it_trains(tmp_path: Path, beta: float) -> None:
    from convert.build_default import BuildSpec, build

    with pytest.raises(ValueError, match="threshold_beta"):
        build(BuildSpec(name="t", version=1, out_bundle=tmp_path / "t.bundle", work_dir=tmp_path / "w",
                        threshold_beta=beta))
    assert not (tmp_path / "w").exists() and not (tmp_path / "t.bundle").exists()


@pytest.mark.parametrize("p", ["1.5", "-0.1"])
def test_train_refuses_a_randconv_share_outside_0_to_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], p: str) -> None:
    code = main(["train", str(tmp_path / "x.bundle"), "--synth", "4", "--randconv", p, "--unsigned", "--quiet",
                 "--work", str(tmp_path / "w")])
    assert code != 0 and "--randconv" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "x.bundle").exists()


def test_the_default_build_takes_a_seed_and_randconv_and_refuses_a_bad_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from convert.build_default import DEFAULT_SEED, default_spec
    from convert.build_default import main as build_main

    spec = default_spec(tmp_path / "w", 10, 4, 2, False, tmp_path, seed=11, randconv=0.5)
    assert (spec.train.seed, spec.train.aug.randconv) == (11, 0.5)
    assert default_spec(tmp_path / "w", 10, 4, 2, False, tmp_path).train.seed == DEFAULT_SEED
    with pytest.raises(SystemExit) as e:
        build_main(["--work", str(tmp_path / "w"), "--models", str(tmp_path), "--no-esd", "--randconv", "1.5"])
    assert e.value.code == 2 and "randconv" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_card_only_rewrites_the_card_from_the_saved_report_without_rebuilding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After editing models/NOTES.md the card is redrawn from the last build's report; the bundle is not touched.

    Without the build's work folder too (a fresh clone): the learning curve is part of the saved report."""
    import json

    from convert.build_default import DEFAULT_NAME, MODELS
    from convert.build_default import main as build_main

    models = tmp_path / "models"
    with pytest.raises(SystemExit) as e:  # nothing built there yet: a clear error, not a traceback
        build_main(["--card-only", "--models", str(models), "--no-esd", "--work", str(tmp_path / "w")])
    assert e.value.code == 2 and "no build report" in capsys.readouterr().err
    models.mkdir()
    saved = json.loads((MODELS / f"{DEFAULT_NAME}.json").read_text())
    saved["report"]["threshold"] = 0.61
    saved["report"]["learning_curve"] = [{"step": 500, "seconds": 9.0, "synthetic-val": 0.4321}]
    (models / f"{DEFAULT_NAME}.json").write_text(json.dumps(saved))
    (models / "NOTES.md").write_text("## A note written after the build\n")
    assert build_main(["--card-only", "--models", str(models), "--no-esd", "--work", str(tmp_path / "w")]) == 0
    card = (models / "README.md").read_text()
    assert "Threshold shipped: 0.61" in card and card.rstrip().endswith("## A note written after the build")
    assert "| 500 | 0.432 |" in card  # the learning curve comes from the saved report: the work folder is gone
    assert sorted(p.name for p in models.iterdir()) == ["NOTES.md", "README.md", f"{DEFAULT_NAME}.json"]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("m", ["1.0", "-0.5", "nan"])
def test_train_refuses_an_ema_momentum_outside_0_to_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], m: str) -> None:
    code = main(["train", str(tmp_path / "x.bundle"), "--synth", "4", "--ema", m, "--unsigned", "--quiet",
                 "--work", str(tmp_path / "w")])
    assert code != 0 and "--ema" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "x.bundle").exists()


@pytest.mark.slow
def test_finetune_soup_ships_the_mean_of_its_members_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`finetune --soup 2`: two fine-tuning runs with seeds 0 and 1 from the same weights, measured each, and a
    signed bundle made from the element-wise mean of their float weights."""
    import shutil

    import numpy as np

    from convert.soup import average_weights
    from convert.train import load_float_model
    from edge.bundle import load_public_keys, read_bundle
    from edge.detector import Detector

    key, data, weights = _base_and_frames(tmp_path, capsys)
    out, work = tmp_path / "soup.bundle", tmp_path / "w1"
    assert main(["finetune", str(data), "--out", str(out), "--from", str(weights), "--steps", "3", "--batch", "2",
                 "--work", str(work), "--quiet", "--soup", "2", "--seed", "4", *key]) == 0
    report = json.loads(capsys.readouterr().out)
    members = report["soup"]["members"]
    assert [m["seed"] for m in members] == [4, 5]
    assert all(0.0 <= m["ap50"] <= 1.0 for m in members)
    assert report["soup"]["members_mean_ap50"] == pytest.approx(np.mean([m["ap50"] for m in members]), abs=1e-4)
    assert report["soup"]["seconds"] >= report["train_seconds"] >= 0.0  # the whole soup, not the last build
    # the two runs differ (different seeds), and the shipped weights are exactly their mean
    a, _ = load_float_model(work / "member-0" / "float" / "model.weights.h5")
    b, _ = load_float_model(work / "member-1" / "float" / "model.weights.h5")
    soup, _ = load_float_model(work / "float" / "model.weights.h5")
    assert any(not np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
    for x, y, m in zip(a.get_weights(), b.get_weights(), soup.get_weights(), strict=True):
        np.testing.assert_allclose(m, (x + y) / 2, rtol=1e-6, atol=1e-7)
    saved = json.loads((work / "float" / "net.json").read_text())
    member_seconds = [json.loads((work / f"member-{k}" / "float" / "net.json").read_text())["seconds"] for k in (0, 1)]
    assert saved["seconds"] == pytest.approx(sum(member_seconds), abs=0.11) and len(saved["soup"]) == 2
    # the members train without mosaics: a soup of mosaic runs measured worse than one without (models/NOTES.md)
    assert {json.loads((work / f"member-{k}" / "float" / "net.json").read_text())["train"]["aug"]["mosaic"]
            for k in (0, 1)} == {0.0}
    bundle = read_bundle(out, load_public_keys([tmp_path / "keys"]))  # signed; the members' bundles are not
    assert Detector(bundle, threads=1).check_golden().ok
    assert "baseline" in report and "split" in report

    code = main(["finetune", str(data), "--out", str(tmp_path / "bad.bundle"), "--from", str(weights),
                 "--soup", "0", "--quiet", *key])
    assert code != 0 and "--soup" in capsys.readouterr().err and not (tmp_path / "bad.bundle").exists()
    code = main(["finetune", str(data), "--out", str(tmp_path / "bad.bundle"), "--scratch", "--soup", "2", "--quiet",
                 *key])
    assert code != 0 and "--scratch" in capsys.readouterr().err and not (tmp_path / "bad.bundle").exists()
    with pytest.raises(ValueError, match="no weights"):
        average_weights([], tmp_path / "x.weights.h5")
    other = tmp_path / "w2" / "float"  # the same weights file, saved with another net's config (a 96 input)
    shutil.copytree(weights.parent, other)
    config = json.loads((other / "net.json").read_text())
    config["net"]["width"] = config["net"]["height"] = 96
    (other / "net.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="another net config"):
        average_weights([weights, other / "model.weights.h5"], tmp_path / "x.weights.h5")
    assert not (tmp_path / "x.weights.h5").exists()


def test_train_refuses_two_measured_folders_of_one_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # sets are reported by their folder's name: store-a/dev and store-b/dev would leave one set's figures out
    for store in ("store-a", "store-b"):
        assert main(["synth", str(tmp_path / store / "dev"), "--n", "1", "--size", "64", "--workers", "1"]) == 0
    capsys.readouterr()
    code = main(["train", str(tmp_path / "x.bundle"), "--synth", "4", "--val", str(tmp_path / "store-a" / "dev"),
                 "--val", str(tmp_path / "store-b" / "dev"), "--unsigned", "--quiet", "--work", str(tmp_path / "w")])
    assert code != 0 and "--val folders must have different names" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "x.bundle").exists()


def test_a_default_build_into_another_folder_leaves_the_repositorys_trusted_key_alone(tmp_path: Path) -> None:
    # `python -m convert.build_default --models M` (an experiment) wrote the builder's public key over
    # models/keys/shelfscout-default-2.pub in the repository, which every cart's built-in trust comes from
    from convert.build_default import MODELS, default_spec

    spec = default_spec(tmp_path / "w", 10, 4, 2, with_esd=False, models=tmp_path / "m")
    assert spec.out_bundle.parent == tmp_path / "m"
    assert spec.public_key_out is not None and spec.public_key_out.parent == tmp_path / "m" / "keys"
    assert default_spec(tmp_path / "w", 10, 4, 2, with_esd=False).public_key_out.parent == MODELS / "keys"  # type: ignore[union-attr]
