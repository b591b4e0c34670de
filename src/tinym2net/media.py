"""Audio, image and video I/O, each read bounded and checked: a file that cannot be used is a
DataError saying what is wrong with it (empty, truncated, not audio, non-finite samples, too long).

Audio files (WAV, FLAC, OGG, MP3) go through soundfile (libsndfile 1.2 decodes MP3); pictures and
videos through ffmpeg, the binary shipped in the imageio-ffmpeg wheel. Every source (demo, Coswara,
manifests, folders, YouTube) and the slice stage read with these functions.
"""
from __future__ import annotations

import logging
import re
import struct
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soundfile as sf

from .errors import DataError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg"}
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".avi", ".mov"}
PEAK_LIMIT = 1000.0   # float audio is expected within +-1; beyond this the samples are not audio levels
CANCEL_DB = -40.0     # a downmix this far below its channels means the channels cancel


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


def kind_of(path: str | Path) -> str | None:
    """'audio', 'image' or 'video' by extension; None for anything else."""
    suffix = Path(path).suffix.lower()
    for kind, extensions in (("audio", AUDIO_EXTENSIONS), ("image", IMAGE_EXTENSIONS), ("video", VIDEO_EXTENSIONS)):
        if suffix in extensions:
            return kind
    return None


# ----------------------------------------------------------------------------- audio

def _wav_truncation(path: Path) -> str | None:
    """For a RIFF file: '<have> of <declared> bytes' when the file is shorter than its header says."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    field, have = struct.unpack("<I", head[4:8])[0], path.stat().st_size
    if field in (0, 0xFFFFFFFF):  # a streaming writer's placeholder: no declared length
        return None
    return f"{have} of {field + 8} bytes" if have + 1 < field + 8 else None


def read_audio(path: str | Path, *, max_seconds: float) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate of an audio file, read at most `max_seconds` long."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        text = str(exc)
        why = ("not an audio file (format not recognised)" if "not recognised" in text
               else f"not readable as audio ({size} bytes; truncated or corrupt)" if "does not exist" in text
               else f"corrupt audio file ({text.split(': ', 1)[-1]})")
        raise DataError(f"{path}: {why}") from None
    if info.samplerate <= 0:
        raise DataError(f"{path}: corrupt audio file (sample rate {info.samplerate})")
    cap = int(max_seconds * info.samplerate)
    if info.frames > cap:
        raise DataError(f"{path}: {info.frames / info.samplerate:.0f} s long, over limits.recording_seconds "
                        f"({max_seconds:g} s)")
    try:
        audio, sr = sf.read(str(path), frames=cap + 1, dtype="float32", always_2d=True)  # (n, channels)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise DataError(f"{path}: corrupt audio file ({exc})") from None
    if len(audio) > cap:
        raise DataError(f"{path}: longer than limits.recording_seconds ({max_seconds:g} s)")
    # libsndfile trims a cut WAV's length to its data; other formats report the declared length
    # (an MP3's is an estimate without a Xing header, hence the 2% slack)
    short = info.format != "WAV" and 0 < len(audio) < 0.98 * info.frames
    truncated = _wav_truncation(path) or (f"{len(audio)} of {info.frames} samples" if short else None)
    if truncated:
        raise DataError(f"{path}: truncated ({truncated})")
    if len(audio) == 0:
        raise DataError(f"{path}: audio file is empty (0 samples)")
    bad = int((~np.isfinite(audio)).sum())
    if bad:
        raise DataError(f"{path}: {bad} non-finite samples (NaN or inf)")
    peak = float(np.abs(audio).max())
    if peak > PEAK_LIMIT:
        raise DataError(f"{path}: peak amplitude {peak:.3g} is not an audio level (full scale is 1.0)")
    return downmix(audio, path), int(sr)


def downmix(audio: np.ndarray, path: Path) -> np.ndarray:
    """(n, channels) -> (n,) mean of the channels, with a warning when the channels cancel."""
    mono = audio.mean(axis=1)
    if audio.shape[1] > 1:
        channel_rms = float(np.sqrt((audio.astype(np.float64) ** 2).mean(axis=0)).mean())
        mix_rms = float(np.sqrt((mono.astype(np.float64) ** 2).mean()))
        if channel_rms > 1e-6 and mix_rms < channel_rms * 10 ** (CANCEL_DB / 20):
            log.warning("%s: its %d channels cancel in the downmix (mix %.1f dB below the channels): "
                        "the mono signal is nearly silent", path, audio.shape[1],
                        20 * np.log10(max(mix_rms, 1e-12) / channel_rms))
    return mono.astype(np.float32)


def write_wav(path: str | Path, audio: np.ndarray, sr: int) -> None:
    """Write 16-bit PCM WAV (the format of the Coswara recordings)."""
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16")


# ----------------------------------------------------------------------------- pictures and videos

def probe(path: str | Path) -> dict:
    """Duration (s), picture size and whether the file has video and audio streams (ffmpeg's banner)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True)
    text = proc.stderr.decode(errors="replace")
    if "Invalid data found" in text or "Stream #" not in text:
        raise DataError(f"{path}: not a readable picture or video file")
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else 0.0
    streams = re.findall(r"Stream #\S+.*?: (Video|Audio): (.*)", text)
    pictures = [rest for kind, rest in streams if kind == "Video"]
    size = re.search(r"\b(\d{1,6})x(\d{1,6})\b", pictures[0]) if pictures else None
    return {"duration": duration, "has_video": any("attached pic" not in rest for rest in pictures),
            "has_audio": any(k == "Audio" for k, _ in streams),
            "width": int(size[1]) if size else 0, "height": int(size[2]) if size else 0}


def read_image(path: str | Path, *, size: int, max_pixels: int) -> np.ndarray:
    """A picture scaled to size x size RGB: (size, size, 3) uint8."""
    info = probe(path)
    if not info["has_video"] or not info["width"]:
        raise DataError(f"{path}: not a readable picture")
    if info["width"] * info["height"] > max_pixels:
        raise DataError(f"{path}: {info['width']}x{info['height']} pixels, over limits.image_pixels ({max_pixels})")
    raw = _run_ffmpeg(["-i", str(path), "-frames:v", "1", "-vf", f"scale={size}:{size}:flags=area",
                       "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], str(path))
    if len(raw) != size * size * 3:
        raise DataError(f"{path}: not a readable picture ({len(raw)} bytes decoded)")
    return np.frombuffer(raw, np.uint8).reshape(size, size, 3)


def check_video(path: str | Path, *, max_seconds: float, need: tuple[str, ...] = ("video", "audio")) -> float:
    """Duration of a video that has the tracks in `need` and is at most `max_seconds` long."""
    info = probe(path)
    missing = [k for k in need if not info[f"has_{k}"]]
    if missing:
        raise DataError(f"{path}: video has no {' and no '.join(missing)} track")
    if info["duration"] > max_seconds:
        raise DataError(f"{path}: {info['duration']:.0f} s long, over limits.recording_seconds ({max_seconds:g} s)")
    return info["duration"]


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
    return np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)


def read_soundtrack(path: str | Path, *, sr: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """A video's audio track as mono float32 at `sr` Hz."""
    args = [*_range_args(start, end), "-i", str(path), "-vn", "-ac", "1", "-ar", str(sr), "-f", "f32le", "-"]
    audio = np.frombuffer(_run_ffmpeg(args, str(path)), np.float32).copy()
    bad = int((~np.isfinite(audio)).sum())
    if bad:
        raise DataError(f"{path}: {bad} non-finite audio samples (NaN or inf)")
    return audio


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
