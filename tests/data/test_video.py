"""Video IO and clip windows: real sample files, encoders' round trips, every bad-input reason."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trackgo_data.clips import ClipConfig, check_source, iter_clips, plan_windows, resample_indices
from trackgo_data.video import (
    VideoError,
    cover_size,
    decode_mp4,
    encode_lossless_rgb,
    encode_mp4,
    probe,
    read_frames,
    read_windows,
    resize_crop,
)


def _smooth_video(t=8, h=48, w=64, seed=0):
    """A moving smooth pattern (compresses well, realistic for a lossy codec)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(t):
        r = 127 + 100 * np.sin((xx + 2 * i) / 7.0)
        g = 127 + 100 * np.cos((yy - i) / 5.0)
        b = 127 + 60 * np.sin((xx + yy + 3 * i) / 9.0)
        out.append(np.stack([r, g, b], -1))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def test_probe_real_sample(sample_videos):
    info = probe(sample_videos["carphone"])
    assert (info.width, info.height, info.num_frames, info.codec) == (176, 144, 120, "h264")
    assert info.fps == pytest.approx(30000 / 1001)
    assert info.duration == pytest.approx(120 / (30000 / 1001), rel=1e-3)


def test_read_window_equals_slice_of_full_decode(sample_videos):
    p = sample_videos["carphone"]
    full = read_frames(p)
    assert full.shape == (120, 144, 176, 3)
    win = read_frames(p, start=70, count=6)  # seeks
    np.testing.assert_array_equal(win, full[70:76])
    wins = dict(read_windows(p, [0, 5, 112, 113], 8, size=None))
    assert sorted(wins) == [0, 5, 112]  # 113 + 8 > 120 frames: not yielded
    np.testing.assert_array_equal(wins[112], full[112:120])
    np.testing.assert_array_equal(wins[5], full[5:13])


def test_decode_with_resize_matches_resize_crop(sample_videos):
    p = sample_videos["carphone"]
    full = read_frames(p, count=3)
    fused = read_frames(p, count=3, size=(96, 48))        # swscale inside the decode
    ref = resize_crop(full, 96, 48)                        # OpenCV after decoding
    assert fused.shape == ref.shape == (3, 48, 96, 3)
    assert np.abs(fused.astype(int) - ref.astype(int)).mean() < 4.0
    # 176×144 covering 96×48: scale 96/176 → 96×79 (rounded), centre-crop rows 15..62
    assert cover_size(176, 144, 96, 48) == (96, 79)


def test_one_scaler_per_stream_with_the_thread_setting(sample_videos, monkeypatch):
    """Every frame of a stream goes through one libswscale context whose thread count is the
    process's decode-thread setting, and the pixels equal PyAV's per-frame conversion."""
    import av
    from av.video import reformatter as ref_mod

    from trackgo_data import video

    made, thread_args = [], []
    real = ref_mod.VideoReformatter

    class Recording:  # the Cython class cannot be subclassed: wrap it
        def __init__(self):
            self.inner = real()
            made.append(self)

        def reformat(self, frame, *args, **kwargs):
            thread_args.append(kwargs.get("threads"))
            return self.inner.reformat(frame, *args, **kwargs)

    monkeypatch.setattr(ref_mod, "VideoReformatter", Recording)
    p = sample_videos["carphone"]
    old = video.get_decode_threads()
    try:
        video.set_decode_threads(1)
        scaled = read_frames(p, count=5, size=(96, 48))
        plain = read_frames(p, count=5)
    finally:
        video.set_decode_threads(old)
    assert len(made) == 2  # one per decoded stream, not one per frame
    # PyAV >= 17 threads its scaler (and takes the count); older ones scale on the calling thread
    assert thread_args == [1 if video.pyav_threads_scaler(av.__version__) else None] * 10
    assert not video.pyav_threads_scaler("16.1.0") and video.pyav_threads_scaler("17.0.0")
    with av.open(str(p)) as c:
        frames = [f for _, f in zip(range(5), c.decode(video=0))]
    w, h = cover_size(176, 144, 96, 48)
    ref = [f.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA") for f in frames]
    top = (h - 48) // 2
    np.testing.assert_array_equal(scaled, np.stack([r[top:top + 48, :96] for r in ref]))
    np.testing.assert_array_equal(plain, np.stack([f.to_ndarray(format="rgb24") for f in frames]))


def test_lossless_rgb_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 24, 40, 3), dtype=np.uint8)   # noise: worst case
    frames[:, :4, :4] = (255, 0, 0)
    data = encode_lossless_rgb(frames, tmp_path / "t.mp4", fps=25)
    assert (tmp_path / "t.mp4").read_bytes() == data
    np.testing.assert_array_equal(decode_mp4(data), frames)
    np.testing.assert_array_equal(decode_mp4(tmp_path / "t.mp4"), frames)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_encode_mp4_visually_lossless(sample_videos):
    frames = read_frames(sample_videos["carphone"], count=6, size=(128, 96))
    out = decode_mp4(encode_mp4(frames, fps=25, crf=17))
    assert out.shape == frames.shape
    mse = np.mean((out.astype(np.float64) - frames) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 35  # PSNR in dB
    with pytest.raises(ValueError, match="even"):
        encode_mp4(frames[:, :95], fps=25)


def _blocky_frames():
    """8×8-pixel blocks of random colour, 64 px wide: four macroblocks per row, the width at
    which x264's AVX-512 MB-tree step reads past the row (and past its buffers)."""
    rng = np.random.default_rng(0)
    blocks = (rng.random((5, 64, 64, 3)) * 255).astype(np.uint8)[:, ::8, ::8]
    return np.repeat(np.repeat(blocks, 8, 1), 8, 2)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _set_malloc_perturb():
    """glibc's ``mallopt(M_PERTURB, byte)``: new heap blocks come filled with ``~byte``, freed
    ones with ``byte`` (0: off). None where the C library has no mallopt."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    return lambda byte: mallopt(-6, byte)


def test_h264_encode_is_deterministic_within_a_process():
    """Forty encodes of the same frames, the heap holding different leftovers before each
    (whatever earlier work left, or a perturbation byte where glibc offers one): one result."""
    frames = _blocky_frames()
    perturb = _set_malloc_perturb()
    digests = set()
    try:
        for i in range(40):
            if perturb is not None:
                perturb((37 * i) % 256)
            digests.add(_md5(encode_mp4(frames, fps=7)))
    finally:
        if perturb is not None:
            perturb(0)
    assert len(digests) == 1


def test_h264_encode_gives_the_same_bytes_in_other_processes(tmp_path):
    """Fresh processes whose heap blocks come filled with 0xaa or 0x55 (glibc's MALLOC_PERTURB_)
    write the bytes this process writes: no leftover memory reaches the bitstream."""
    frames = _blocky_frames()
    np.save(tmp_path / "f.npy", frames)
    code = ("import sys, hashlib, numpy as np; from trackgo_data.video import encode_mp4; "
            "print(hashlib.md5(encode_mp4(np.load(sys.argv[1]), fps=7)).hexdigest())")
    root = str(Path(__file__).resolve().parents[2])
    digests = set()
    for byte in ("85", "170"):
        env = {**os.environ, "MALLOC_PERTURB_": byte,
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.npy")], env=env,
                             capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert digests == {_md5(encode_mp4(frames, fps=7))}


def _x264_capabilities(encode) -> list[str]:
    """The SIMD levels x264 says it uses while ``encode()`` runs."""
    import av.logging

    old = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture() as logs:
            encode()
    finally:
        av.logging.set_level(old)
    lines = [m for _, name, m in logs if name.startswith("libx264") and "cpu capabilities" in m]
    assert lines, "x264 logged no capability line"
    return lines[0].split(":", 1)[1].split()


def test_h264_encode_drops_only_avx512_from_x264s_cpu_choice():
    """The SIMD levels x264 picks by itself less AVX-512 (no fall back to slower code), for the
    H.264 and the lossless RGB encoder."""
    import av

    frames = _blocky_frames()

    def plain():  # x264's own choice
        with av.open(io.BytesIO(), mode="w", format="mp4") as c:
            s = c.add_stream("libx264", rate=7)
            s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
            s.options = {"crf": "17", "preset": "veryfast", "threads": "1"}
            for f in frames:
                for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)

    own = _x264_capabilities(plain)
    expected = [c for c in own if c != "AVX512"]
    assert "AVX2" in expected or "AVX512" not in own   # never a fall back to slower code
    assert _x264_capabilities(lambda: encode_mp4(frames, fps=7)) == expected
    assert _x264_capabilities(lambda: encode_lossless_rgb(frames, fps=7)) == expected


def test_x264_library_not_found_keeps_encoding(monkeypatch, caplog):
    from trackgo_data import video_encode as video

    monkeypatch.setattr(video, "_libx264_path", lambda: None)
    video.x264_asm_without_avx512.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="trackgo_data.video_encode"):
            data = encode_mp4(_blocky_frames(), fps=7)
        assert "cannot inspect libx264 (library not found)" in caplog.text
        assert decode_mp4(data).shape == (5, 64, 64, 3)
    finally:
        video.x264_asm_without_avx512.cache_clear()


def test_plan_windows():
    assert plan_windows(132, ClipConfig()) == [0, 25, 50, 75, 100]
    assert plan_windows(40, ClipConfig(num_frames=25, stride=5)) == [0, 5, 10, 15]
    assert plan_windows(24, ClipConfig()) == []
    assert plan_windows(132, ClipConfig(max_clips_per_video=2)) == [0, 25]
    with pytest.raises(ValueError):
        ClipConfig(width=100)


def test_iter_clips_real_video(sample_videos):
    cfg = ClipConfig(num_frames=8, stride=50, width=64, height=32)
    clips = list(iter_clips(sample_videos["carphone"], cfg))
    assert [s for s, _ in clips] == [0, 50, 100]
    assert all(f.shape == (8, 32, 64, 3) and f.dtype == np.uint8 for _, f in clips)
    np.testing.assert_array_equal(clips[1][1], read_frames(sample_videos["carphone"], 50, 8, size=(64, 32)))


def test_resample_indices_by_hand():
    # 10 frames at 30 fps = 1/3 s; at 16 fps output frame k starts at source frame 1.875·k
    assert resample_indices(10, 30.0, 16.0) == [0, 1, 3, 5, 7, 9]
    assert resample_indices(10, 30.0, None) == list(range(10))
    assert resample_indices(10, 29.97, 30.0) == list(range(10))  # within 1 %: the source's own rate
    assert resample_indices(6, 25.0, 12.5) == [0, 2, 4]


def test_iter_clips_resampled_to_another_rate(sample_videos):
    """carphone is 29.97 fps: 120 frames → 65 at 16 fps; each clip frame is the source frame on screen."""
    video = sample_videos["carphone"]
    cfg = ClipConfig(num_frames=9, stride=20, width=64, height=32, fps=16.0)
    indices = resample_indices(120, 30000 / 1001, 16.0)
    assert len(indices) == 65 and indices[:4] == [0, 1, 3, 5]
    clips = list(iter_clips(video, cfg))
    assert [s for s, _ in clips] == [indices[k] for k in (0, 20, 40)]  # 60 + 9 > 65: three windows
    source = read_frames(video, size=(64, 32))
    for s, frames in clips:
        k = indices.index(s)
        np.testing.assert_array_equal(frames, source[indices[k:k + 9]])
    assert _reason(lambda: list(iter_clips(video, ClipConfig(num_frames=8, width=64, height=32, fps=60.0)))) == \
        "low_frame_rate"
    assert _reason(lambda: list(iter_clips(video, ClipConfig(num_frames=81, width=64, height=32, fps=16.0)))) == \
        "too_short"  # 65 frames at 16 fps
    with pytest.raises(ValueError, match="fps"):
        ClipConfig(fps=0)


# ---- bad input → reason ----------------------------------------------------------------------

def _reason(fn):
    with pytest.raises(VideoError) as exc:
        fn()
    return exc.value.reason


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    assert _reason(lambda: probe(p)) == "empty_file"
    assert _reason(lambda: list(iter_clips(p, ClipConfig()))) == "empty_file"


def test_text_file_renamed_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    assert _reason(lambda: probe(p)) == "undecodable"
    assert _reason(lambda: read_frames(p)) == "undecodable"


def test_truncated_without_index_is_undecodable(tmp_path, sample_videos):
    data = sample_videos["carphone"].read_bytes()   # moov at the end: cut → no index
    p = tmp_path / "cut.mp4"
    p.write_bytes(data[: len(data) // 2])
    assert _reason(lambda: list(iter_clips(p, ClipConfig(num_frames=8, width=64, height=32)))) == "undecodable"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg binary absent")
def test_truncated_partial_decode_is_too_short(tmp_path, sample_videos):
    full = tmp_path / "fs.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(sample_videos["carphone"]), "-frames:v", "40",
                    "-c", "copy", "-movflags", "+faststart", str(full)], check=True)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.45)])
    frames = read_frames(cut)                       # what decodes, decodes
    assert 0 < len(frames) < 40
    assert probe(cut).num_frames == 40              # the header still promises 40
    cfg = ClipConfig(num_frames=30, width=64, height=32)
    assert _reason(lambda: list(iter_clips(cut, cfg))) == "too_short"


def test_video_shorter_than_clip(tmp_path):
    p = tmp_path / "short.mp4"
    encode_mp4(_smooth_video(t=5, h=144, w=176), p, fps=25)
    cfg = ClipConfig(num_frames=8, width=64, height=32)
    assert _reason(lambda: check_source(probe(p), cfg)) == "too_short"
    assert _reason(lambda: list(iter_clips(p, cfg))) == "too_short"


def test_tiny_resolution(tmp_path):
    p = tmp_path / "tiny.mp4"
    encode_mp4(_smooth_video(t=10, h=24, w=32), p, fps=25)
    assert _reason(lambda: list(iter_clips(p, ClipConfig(num_frames=8, width=64, height=32)))) == "too_small"


def test_video_error_rejects_unknown_reason():
    with pytest.raises(ValueError):
        VideoError("weird")
