"""Camera sources on real files: an mp4 written here with cv2.VideoWriter, image folders, a missing V4L2 device."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.cartpass import iter_video_rgb
from edge.config import CameraConfig
from edge.sources import (
    FolderSource,
    FrameSource,
    OpenCVSource,
    Pacer,
    SourceError,
    mask_url,
    open_source,
)

W, H = 320, 240
BITS = 8


def frame_bgr(i: int) -> np.ndarray:
    """Frame i of the test clips: its number in binary as black/white 16 px blocks along the top, a moving bar,
    and a red patch (BGR order in OpenCV) to check the RGB conversion."""
    img = np.full((H, W, 3), 90, np.uint8)
    for bit in range(BITS):
        if (i >> bit) & 1:
            img[:16, bit * 16:(bit + 1) * 16] = 255
        else:
            img[:16, bit * 16:(bit + 1) * 16] = 0
    x = (i * 5) % (W - 20)
    cv2.rectangle(img, (x, 60), (x + 20, 180), (255, 255, 255), -1)
    img[200:232, 280:312] = (0, 0, 255)  # red in BGR
    # Per-frame noise keeps the clip from compressing to nothing, so a reader cannot buffer all of it.
    img[190:, :200] = np.random.default_rng(i).integers(0, 256, (H - 190, 200, 3), dtype=np.uint8)
    return img


def frame_id(rgb: np.ndarray) -> int:
    """The frame number that `frame_bgr` drew, read back from a decoded RGB frame (robust to JPEG/mp4v loss)."""
    h, w = rgb.shape[:2]
    sy, sx = h / H, w / W
    n = 0
    for bit in range(BITS):
        y0, y1 = int(3 * sy), int(13 * sy)
        x0, x1 = int((bit * 16 + 3) * sx), int((bit * 16 + 13) * sx)
        if rgb[y0:y1, x0:x1].mean() > 128:
            n |= 1 << bit
    return n


def write_video(path: Path, n: int, fps: float = 15.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened(), "this OpenCV build cannot write mp4v"
    for i in range(n):
        writer.write(frame_bgr(i))
    writer.release()
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame of a video as RGB, decoded straight through OpenCV (the reference)."""
    return list(iter_video_rgb(path))


def read_all(src: FrameSource, limit: int = 10_000) -> list[np.ndarray]:
    src.open()
    try:
        out: list[np.ndarray] = []
        while len(out) < limit:
            img = src.read()
            if img is None:
                break
            out.append(img)
        return out
    finally:
        src.close()


def cam(source: str | Path, **kw: object) -> CameraConfig:
    return CameraConfig(source=str(source), width=W, height=H, **kw)  # type: ignore[arg-type]


def test_video_file_gives_every_frame_in_rgb_then_none(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 30)
    src = open_source(cam(video))
    assert isinstance(src, OpenCVSource) and src.finite
    frames = read_all(src)
    ref = decode_all(video)
    assert len(frames) == len(ref) == 30
    for got, want in zip(frames, ref, strict=True):
        assert got.dtype == np.uint8 and got.shape == (H, W, 3)
        assert np.array_equal(got, want)
    assert [frame_id(f) for f in frames] == list(range(30))
    assert src.fps == pytest.approx(15.0)
    red = frames[20][204:228, 284:308].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 50 and red[2] < 50  # RGB order


def test_video_is_resized_to_the_configured_size(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 5)
    frames = read_all(open_source(CameraConfig(source=str(video), width=160, height=120)))
    assert len(frames) == 5 and all(f.shape == (120, 160, 3) for f in frames)


def test_a_source_of_another_shape_is_said_once_with_the_size_to_set(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A 4:3 clip read as 16:9 (camera.width x height 320x180) is stretched to fit: the frames, the preview and
    the snapshots. Before, that happened without a word (the contract audit's defect 3); now one warning per source
    names it and the height that keeps the source's shape. The same shape at another size is only resized."""
    video = write_video(tmp_path / "pass.mp4", 5)
    with caplog.at_level("WARNING", logger="edge.sources"):
        frames = read_all(open_source(CameraConfig(source=str(video), width=320, height=180)))
    assert len(frames) == 5 and all(f.shape == (180, 320, 3) for f in frames)
    said = [r.getMessage() for r in caplog.records if "stretched" in r.getMessage()]
    assert said == [f"video {video} delivers 320x240 frames (1.33:1), camera.width x camera.height is 320x180 "
                    "(1.78:1): the frames, the preview and the snapshots are stretched to fit; set width = 320 and "
                    "height = 240 under [camera] for this source's shape"]
    caplog.clear()
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(frame_bgr(i), (640, 360)))
    with caplog.at_level("WARNING", logger="edge.sources"):
        assert len(read_all(open_source(cam(folder)))) == 2  # 16:9 photos, 4:3 config
        assert len(read_all(open_source(CameraConfig(source=str(video), width=160, height=120)))) == 5
    said = [r.getMessage() for r in caplog.records if "stretched" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"folder {folder} delivers 640x360 frames")
    assert "set width = 320 and height = 180" in said[0]


def test_seek_resumes_at_the_exact_frame(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 40)
    ref = decode_all(video)
    for k in (1, 13, 27, 39):
        src = OpenCVSource(str(video), "file", cam(video))
        src.open()
        src.seek(k)
        img = src.read()
        src.close()
        assert img is not None and np.array_equal(img, ref[k]), k
    src = OpenCVSource(str(video), "file", cam(video))
    src.open()
    with pytest.raises(SourceError, match="cannot resume at frame 40, the file has 40"):
        src.seek(40)
    src.close()


def test_looped_video_wraps_around_and_is_not_finite(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 10)
    src = open_source(cam(video, loop=True))
    assert not src.finite
    frames = read_all(src, limit=25)
    assert len(frames) == 25
    assert [frame_id(f) for f in frames] == [i % 10 for i in range(25)]


def test_folder_is_read_in_name_order_skipping_undecodable_images(tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in (3, 0, 2, 1):  # written out of order
        ext = ".png" if i % 2 else ".jpg"
        cv2.imwrite(str(folder / f"img_{i:03d}{ext}"), frame_bgr(i * 10))
    (folder / "img_001b.jpg").write_bytes(b"not a jpeg")  # sorts between 1 and 2
    (folder / "notes.txt").write_text("ignored")
    src = open_source(cam(folder))
    assert isinstance(src, FolderSource) and src.finite
    frames = read_all(src)
    assert [frame_id(f) for f in frames] == [0, 10, 20, 30]
    assert all(f.shape == (H, W, 3) for f in frames)
    # reopened and resumed at frame 3 (what the capture thread does after a failure): the image after frame 2,
    # not the fourth file (frame 2 again: the undecodable file before it is not a frame)
    src.open()
    src.seek(3)
    resumed = [src.read(), src.read()]
    assert resumed[0] is not None and frame_id(resumed[0]) == 30 and resumed[1] is None
    src.close()
    fresh = open_source(cam(folder))  # a new source never read: frame 1 is the 2nd file
    fresh.open()
    assert isinstance(fresh, FolderSource)
    fresh.seek(1)
    first = fresh.read()
    assert first is not None and frame_id(first) == 10
    fresh.close()


def test_folder_resizes_and_loops(tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(frame_bgr(i), (640, 480)))
    frames = read_all(open_source(cam(folder, loop=True)), limit=7)
    assert [frame_id(f) for f in frames] == [0, 1, 2, 0, 1, 2, 0]
    assert all(f.shape == (H, W, 3) for f in frames)


def test_empty_folder_and_missing_paths_are_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"^folder .*empty: no \.jpg or \.png images$"):
        open_source(cam(tmp_path / "empty")).open()
    with pytest.raises(SourceError, match=r"^video .*aisle9\.mp4: no such file or folder$"):
        open_source(cam(tmp_path / "aisle9.mp4")).open()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 5000)
    with pytest.raises(SourceError, match=r"^video .*bad\.mp4: cannot decode"):
        open_source(cam(bad)).open()


def test_missing_camera_device_is_a_clear_error() -> None:
    with pytest.raises(SourceError) as e:
        open_source(cam("/dev/video99")).open()
    assert str(e.value) == "camera /dev/video99: no such device"
    with pytest.raises(SourceError) as e:
        open_source(cam("99")).open()
    assert str(e.value) == "camera /dev/video99: no such device"


def test_unreachable_stream_is_a_clear_error_with_the_password_masked() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    src = open_source(cam(f"http://user:hunter2@127.0.0.1:{port}/video"), timeout_s=2.0)
    assert not src.finite
    with pytest.raises(SourceError) as e:
        src.open()
    assert "hunter2" not in str(e.value)
    assert str(e.value).startswith(f"stream http://user:***@127.0.0.1:{port}/video: cannot connect")


def test_dispatch_on_the_source_string(tmp_path: Path) -> None:
    assert open_source(cam("0")).name == "/dev/video0"
    assert open_source(cam("/dev/video2")).name == "/dev/video2"
    assert open_source(cam("rtsp://cam.local/stream1")).name == "rtsp://cam.local/stream1"
    assert open_source(cam("picamera2")).name == "picamera2"
    assert open_source(cam("picamera2:1")).name == "picamera2:1"
    video = write_video(tmp_path / "v.mp4", 2)
    assert len(read_all(open_source(cam(f"file://{video}")))) == 2
    with pytest.raises(SourceError, match="unsupported URL scheme 'ftp'"):
        open_source(cam("ftp://host/video.mp4"))
    assert mask_url("rtsp://admin:pw@10.0.0.5:554/s") == "rtsp://admin:***@10.0.0.5:554/s"
    assert mask_url("http://phone:8080/video") == "http://phone:8080/video"


def test_pacer_schedules_on_the_monotonic_clock_without_catch_up_bursts() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(round(s, 6))
        now[0] += s

    p = Pacer(10.0, clock=lambda: now[0], sleep=sleep)
    p.wait()  # first frame: immediately
    p.wait()  # due 0.1 s later
    now[0] += 0.03  # the reader took 30 ms
    p.wait()
    assert slept == [0.1, 0.07]
    now[0] += 1.0  # the reader stalled for a second: restart the schedule instead of bursting 10 frames
    p.wait()
    p.wait()
    assert slept == [0.1, 0.07, 0.1]
    with pytest.raises(ValueError):
        Pacer(0)


def test_realtime_video_still_gives_every_frame_in_order(tmp_path: Path) -> None:
    video = write_video(tmp_path / "fast.mp4", 12, fps=60.0)
    src = open_source(cam(video, realtime=True))
    frames = read_all(src)
    assert [frame_id(f) for f in frames] == list(range(12))
    assert src.fps == pytest.approx(60.0)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_camera_mounted_on_its_side_or_upside_down_gives_upright_frames(tmp_path: Path, degrees: int) -> None:
    """A recording of a camera turned against the shelf, read with camera.rotate, gives the upright pictures: the
    clip is written turned the other way, and the frames read back are the upright clip's, numbers and all."""
    undo = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}[degrees]
    turned = [cv2.rotate(frame_bgr(i), undo) for i in range(6)]
    th, tw = turned[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp_path / "turned.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 15.0, (tw, th))
    for img in turned:
        writer.write(img)
    writer.release()
    folder = tmp_path / "turned"
    folder.mkdir()
    for i, img in enumerate(turned):
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    for source in (tmp_path / "turned.mp4", folder):
        frames = read_all(open_source(CameraConfig(source=str(source), width=tw, height=th, rotate=degrees)))
        assert [f.shape for f in frames] == [(H, W, 3)] * 6
        assert [frame_id(f) for f in frames] == list(range(6))
        red = frames[0][204:228, 284:308].reshape(-1, 3).mean(axis=0)  # the red patch is back at bottom right
        assert red[0] > 200 and red[1] < 50 and red[2] < 50


def test_camera_rotate_takes_only_quarter_turns() -> None:
    from edge.config import ConfigError, parse

    with pytest.raises(ConfigError, match=r"camera\.rotate.*0, 90, 180 or 270"):
        parse('[camera]\nsource = "x.mp4"\nrotate = 45\n')
    assert parse('[camera]\nsource = "x.mp4"\nrotate = 270\n').camera.rotate == 270
