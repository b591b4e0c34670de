"""Audio and video I/O. ffmpeg is the binary shipped in the imageio-ffmpeg wheel; WAV goes
through soundfile. Every video source (demo, YouTube, local files) is read by these functions."""
from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soundfile as sf

from .errors import DataError

log = logging.getLogger(__name__)


def ffmpeg_exe() -> str:
    """Path of the project's ffmpeg (the imageio-ffmpeg wheel's binary)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args: list[str], what: str, *, stdin: bytes | None = None) -> bytes:
    cmd = [ffmpeg_exe(), "-hide_banner", *([] if stdin is not None else ["-nostdin"]), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()]
        raise DataError(f"{what}: ffmpeg failed ({lines[-1].strip() if lines else 'no message'})")
    return proc.stdout


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and sample rate; missing, empty or corrupt files raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise DataError(f"{path}: corrupt audio file ({exc})") from None
    if audio.shape[0] == 0:
        raise DataError(f"{path}: audio file is empty (0 samples)")
    return audio.mean(axis=1), int(sr)


def write_wav(path: str | Path, audio: np.ndarray, sr: int) -> None:
    """Write 16-bit PCM WAV (the format of the Coswara recordings)."""
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16")


def probe(path: str | Path) -> dict:
    """Duration (s) and whether the file has video and audio streams, read from ffmpeg's banner."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video file not found")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True)
    text = proc.stderr.decode(errors="replace")
    if "Invalid data found" in text or "Stream #" not in text:
        raise DataError(f"{path}: not a readable video file")
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else 0.0
    streams = re.findall(r"Stream #\S+.*?: (Video|Audio): (.*)", text)
    has_video = any(kind == "Video" and "attached pic" not in rest for kind, rest in streams)
    return {"duration": duration, "has_video": has_video, "has_audio": any(k == "Audio" for k, _ in streams)}


def _range_args(start: float | None, end: float | None) -> list[str]:
    args = []
    if start:
        args += ["-ss", f"{start:.3f}"]
    if end is not None:
        args += ["-t", f"{end - (start or 0.0):.3f}"]
    return args


def read_frames(path: str | Path, *, fps: float = 1.0, size: int = 32,
                start: float | None = None, end: float | None = None) -> np.ndarray:
    """Frames sampled at `fps`, scaled to size x size RGB: (N, size, size, 3) uint8."""
    args = [*_range_args(start, end), "-i", str(path), "-an",
            "-vf", f"fps={fps},scale={size}:{size}:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = _run_ffmpeg(args, str(path))
    frames = np.frombuffer(raw, np.uint8)
    return frames.reshape(-1, size, size, 3)


def read_audio(path: str | Path, *, sr: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """The audio track as mono float32 at `sr` Hz; a file without one raises DataError."""
    if not probe(path)["has_audio"]:
        raise DataError(f"{path}: video has no audio track")
    args = [*_range_args(start, end), "-i", str(path), "-vn", "-ac", "1", "-ar", str(sr), "-f", "f32le", "-"]
    return np.frombuffer(_run_ffmpeg(args, str(path)), np.float32).copy()


def write_video(path: str | Path, frames: np.ndarray, fps: float,
                audio: np.ndarray | None = None, sr: int = 44100) -> None:
    """Encode (T, H, W, 3) uint8 frames (H.264) and optional mono audio (AAC) into an mp4."""
    t, h, w, _ = frames.shape
    with tempfile.TemporaryDirectory() as tmp:
        args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
        if audio is not None:
            wav = Path(tmp) / "audio.wav"
            write_wav(wav, audio, sr)
            args += ["-i", str(wav), "-c:a", "aac", "-b:a", "96k"]
        args += ["-y", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
                 "-shortest", "-loglevel", "error", str(path)]
        _run_ffmpeg(args, str(path), stdin=np.ascontiguousarray(frames, np.uint8).tobytes())
