"""Built-in offline demo source, deterministic from the seed, in the raw formats of the real sources.

covid: participants in Coswara's layout (`<date>/<id>/cough-heavy.wav`, `counting-normal.wav`,
`<date>/<date>.csv`, `combined_data.csv`) at mixed sample rates. A positive participant shows
the disease in the cough only (40%), in the speech only (40%) or in both (20%); 5% of negative
participants show each sign by chance. The signs are faint (a wet cough's low rumble at a third of
the burst's level, a hoarse voice's breath noise and pitch jitter) under random loudness, timbre and
pitch, so each modality alone misses about half of the positives and low-bit quantization can blur
what the fused model relies on.

battlefield: H.264/AAC mp4 videos, several per class. The picture tells helicopter (a rotorcraft in
the sky) from tank (a tracked vehicle on the ground) only by a faint silhouette (2-8% contrast, under
a 4-bit input quantizer's step) and draws bomb and gun from one process (smoke and flashes); the
sound tells bomb (long booms) from gun (rapid shots) but draws helicopter and tank from one
engine-rumble process. Traits such as loudness, engine pitch and tint are drawn anew every second,
so no property of a whole video identifies its class. In 10% of the frames smoke hides the picture
and in 10% of the seconds noise drowns the sound, independently, so even the fused model cannot
tell every second.
"""
from __future__ import annotations

import csv
import logging

import numpy as np
from scipy import signal
from tqdm import tqdm

from .. import media
from ..errors import ParamsError
from . import is_video

log = logging.getLogger(__name__)

WET, HOARSE = 0.35, 0.25  # the signs' share of the sound: faint, but there in every burst and syllable


def _bandpass(x: np.ndarray, lo: float, hi: float, sr: int) -> np.ndarray:
    hi = min(hi, 0.45 * sr)
    sos = signal.butter(4, [lo, hi], btype="band", fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def _lowpass(x: np.ndarray, cutoff: float, sr: int) -> np.ndarray:
    return signal.sosfilt(signal.butter(4, cutoff, fs=sr, output="sos"), x)


# ----------------------------------------------------------------------------- covid

def _cough(rng: np.random.Generator, seconds: float, sr: int, center: float, wet: bool) -> np.ndarray:
    """Cough bursts every 0.4-0.9 s: band noise around `center`; a wet cough adds a faint low rumble
    (at a third of the burst's level)."""
    n = int(seconds * sr)
    out = np.zeros(n)
    t = rng.uniform(0.05, 0.3)
    while t < seconds - 0.1:
        length = int(rng.uniform(0.25, 0.4) * sr)
        env = np.exp(-np.arange(length) / (rng.uniform(0.06, 0.1) * sr))
        env[: int(0.01 * sr)] *= np.linspace(0, 1, int(0.01 * sr))
        burst = _bandpass(rng.standard_normal(length), center * 0.6, center * 1.6, sr)
        if wet:
            rumble = _bandpass(rng.standard_normal(length), 250, 550, sr)
            burst = burst / (burst.std() + 1e-9) + WET * rumble / (rumble.std() + 1e-9)
        burst = env * burst / (np.abs(burst).max() + 1e-9)
        start = int(t * sr)
        stop = min(n, start + length)
        out[start:stop] += burst[: stop - start]
        t += rng.uniform(0.4, 0.9)
    return out


def _speech(rng: np.random.Generator, seconds: float, sr: int, f0: float, hoarse: bool) -> np.ndarray:
    """Counting: voiced syllables (harmonics shaped by random formants); a hoarse voice adds a little
    breath noise and pitch jitter."""
    n = int(seconds * sr)
    out = np.zeros(n)
    t = rng.uniform(0.05, 0.2)
    while t < seconds - 0.3:
        dur = rng.uniform(0.25, 0.45)
        m = int(dur * sr)
        jitter = 0.02 if hoarse else 0.005
        pitch = f0 * (1 + jitter * rng.standard_normal(m)).cumsum() / np.arange(1, m + 1)
        phase = 2 * np.pi * np.cumsum(pitch) / sr
        f1, f2 = rng.uniform(300, 800), rng.uniform(900, 2200)
        voiced = np.zeros(m)
        for k in range(1, int(min(4000, 0.45 * sr) / f0)):
            fk = k * f0
            gain = np.exp(-((fk - f1) / 150) ** 2) + 0.7 * np.exp(-((fk - f2) / 250) ** 2) + 0.05
            voiced += gain / k ** 0.5 * np.sin(k * phase)
        voiced /= np.abs(voiced).max() + 1e-9
        if hoarse:
            breath = _bandpass(rng.standard_normal(m), 1500, 6000, sr)
            voiced = (1 - HOARSE) * voiced + HOARSE * breath / (np.abs(breath).max() + 1e-9)
        env = np.sin(np.linspace(0, np.pi, m)) ** 0.5
        start = int(t * sr)
        stop = min(n, start + m)
        out[start:stop] += (env * voiced)[: stop - start]
        t += dur + rng.uniform(0.08, 0.25)
    return out


def _breathing(rng: np.random.Generator, seconds: float, sr: int, center: float, wheeze: bool) -> np.ndarray:
    """Deep breaths: slow swells of band noise around `center`; a wheeze adds a faint whistle in each breath."""
    n = int(seconds * sr)
    out = np.zeros(n)
    t = rng.uniform(0.1, 0.5)
    while t < seconds - 0.5:
        m = int(rng.uniform(1.2, 2.0) * sr)
        env = np.sin(np.linspace(0, np.pi, m)) ** 2
        breath = _bandpass(rng.standard_normal(m), center * 0.5, center * 2.0, sr)
        breath /= np.abs(breath).max() + 1e-9
        if wheeze:
            f = rng.uniform(400, 900)
            breath = 0.7 * breath + 0.3 * np.sin(2 * np.pi * f * np.arange(m) / sr + rng.uniform(0, 6.3))
        start = int(t * sr)
        stop = min(n, start + m)
        out[start:stop] += (env * breath)[: stop - start]
        t += m / sr + rng.uniform(0.3, 0.8)
    return out


# modality name -> (Coswara recording name, generator(rng, seconds, sr, trait, sign), trait range)
RECORDINGS = {"cough": ("cough-heavy", _cough, (1200, 2800)),
              "speech": ("counting-normal", _speech, (90, 240)),
              "breathing": ("breathing-deep", _breathing, (300, 1200))}


def _fetch_audio(opts, ctx) -> list[dict]:
    """Demo participants in the Coswara layout (`<date>/<id>/<recording>.wav`, `<date>/<date>.csv`,
    `combined_data.csv`): a positive participant shows the disease in one modality (80%, each equally
    likely) or in all of them (20%); 5% of negative participants show each sign by chance."""
    modalities = list(ctx.modalities)
    unknown = [m for m in modalities if m not in RECORDINGS]
    if unknown:
        raise ParamsError(f"params.yaml: cases.{ctx.case}.modalities: the demo source makes no {unknown[0]!r} "
                          f"recording (it makes {', '.join(RECORDINGS)})")
    missing = [m for m in modalities if m not in opts.seconds]
    if missing:
        raise ParamsError(f"params.yaml: fetch.{ctx.case}.demo.seconds: no length range for {missing[0]!r}")
    if len(ctx.classes) != 2:
        raise ParamsError(f"params.yaml: cases.{ctx.case}.classes: the audio demo is binary (negative, positive)")
    negative_label, positive_label = ctx.classes
    rng = np.random.default_rng(ctx.seed)
    labels = np.zeros(opts.participants, int)
    labels[: int(round(opts.participants * opts.positive_fraction))] = 1
    rng.shuffle(labels)
    date = opts.date
    rows, meta = [], []
    for i in tqdm(range(opts.participants), desc="demo participants", unit="participant"):
        pid = f"demo{ctx.seed:02d}P{i:04d}"
        if labels[i]:
            shows = set(modalities) if rng.random() < 0.2 else {modalities[rng.integers(len(modalities))]}
        else:
            shows = {m for m in modalities if rng.random() < 0.05}
        sr = int(rng.choice(opts.sample_rates))
        gain = rng.uniform(0.3, 0.8)
        row = {"subject_id": pid, "label": positive_label if labels[i] else negative_label}
        for m in modalities:
            recording, make, (lo, hi) = RECORDINGS[m]
            audio = make(rng, rng.uniform(*opts.seconds[m]), sr, rng.uniform(lo, hi), m in shows)
            audio = gain * audio / (np.abs(audio).max() + 1e-9)
            audio += rng.uniform(0.002, 0.01) * rng.standard_normal(audio.size)
            rel = f"{date}/{pid}/{recording}.wav"
            ctx.out.mkdir(f"{date}/{pid}")
            media.write_wav(ctx.out.path(rel), audio.astype(np.float32), sr)
            row[m] = rel
        rows.append(row)
        meta.append({"id": pid, "covid_status": "positive_mild" if labels[i] else "healthy", "record_date": date})
    for rel in (f"{date}/{date}.csv", "combined_data.csv"):
        with open(ctx.out.path(rel), "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["id", "covid_status", "record_date"])
            writer.writeheader()
            writer.writerows(meta)
    log.info("wrote %d demo participants (%d positive)", opts.participants, labels.sum())
    return rows


# ----------------------------------------------------------------------------- battlefield

def _scene(rng: np.random.Generator, visual: str, frames: int, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one visual class: 'helicopter', 'tank' or 'fire'.

    Helicopter and tank share one hazy landscape (sky over ground, a random horizon and tint) and differ
    only by a faint silhouette (a rotorcraft in the sky, a tracked vehicle on the ground) whose contrast
    the haze keeps at 2-8% of full scale: a fine cue, which a 4-bit input quantizer (about 6% steps
    here) blurs and an 8-bit one keeps. Fire (bomb and gun alike) is bright flashes in smoke."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((frames, size, size, 3), np.float32)
    pos = rng.uniform(0.2, 0.8, 2)
    vel = rng.uniform(-0.03, 0.03, 2)
    horizon = rng.uniform(0.45, 0.6)
    for f in range(frames):
        pos = np.clip(pos + vel + rng.normal(0, 0.01, 2), 0.15, 0.85)
        if visual in ("helicopter", "tank"):
            sky = np.array([0.55, 0.62, 0.72]) + rng.uniform(-0.05, 0.05, 3)
            ground = np.array([0.47, 0.44, 0.36]) + rng.uniform(-0.05, 0.05, 3)
            img = np.where((yy > horizon)[..., None], ground, sky).astype(np.float32)
            silhouette = np.zeros((size, size), bool)
            if visual == "helicopter":
                cy, cx = 0.1 + (horizon - 0.25) * pos[0], pos[1]
                silhouette |= ((yy - cy) / 0.07) ** 2 + ((xx - cx) / 0.14) ** 2 < 1
                silhouette |= (np.abs(yy - cy + 0.09) < 0.015) & (np.abs(xx - cx) < 0.25)
            else:
                cy, cx = horizon + 0.12 + (0.9 - horizon - 0.12) * pos[0] * 0.5, pos[1]
                silhouette |= (np.abs(yy - cy) < 0.07) & (np.abs(xx - cx) < 0.2)
                silhouette |= (np.abs(yy - cy + 0.1) < 0.045) & (np.abs(xx - cx) < 0.09)
                silhouette |= (np.abs(yy - cy + 0.11) < 0.015) & (xx > cx) & (xx < cx + 0.3)
            contrast = rng.uniform(0.02, 0.08)
            img[silhouette] -= contrast
            img += rng.normal(0, 0.01, img.shape)
        else:  # fire: bomb and gun look alike
            img = np.stack([0.35 + 0.1 * xx, 0.33 + 0.1 * xx, 0.32 + 0.1 * xx], -1)
            for _ in range(rng.integers(1, 4)):
                cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
                flash = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2))[..., None]
                img = img * (1 - flash) + flash * np.array([1.0, 0.65, 0.2])
            smoke = rng.uniform(0, 0.5)
            img = (1 - smoke) * img + smoke * 0.5 + rng.normal(0, 0.04, img.shape)
        if rng.random() < 0.1:  # thick smoke hides the scene in 10% of the frames
            img = 0.1 * img + 0.9 * (0.5 + rng.normal(0, 0.02, img.shape))
        out[f] = img
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def _soundtrack(rng: np.random.Generator, sound: str, seconds: float, sr: int) -> np.ndarray:
    """Mono audio of one sound class: 'engine' (helicopter and tank), 'boom' or 'gunfire'.

    Loudness, noise and engine pitch are drawn anew every second, so that no trait of a whole
    video tells videos of one class from those of another; 10% of the seconds are drowned in noise."""
    n = int(seconds * sr)
    if sound == "engine":
        out = np.zeros(n)
        for start in range(0, n, sr):
            t = np.arange(min(sr, n - start)) / sr
            rumble = _lowpass(rng.standard_normal(len(t)), 350, sr)
            hum = sum(np.sin(2 * np.pi * k * rng.uniform(40, 110) * t) / k for k in (1, 2, 3))
            chop = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(8, 25) * t + rng.uniform(0, 6.3)) ** 2
            out[start:start + len(t)] = chop * rumble / rumble.std() + 0.3 * hum
    else:
        out = np.zeros(n)
        pos = rng.uniform(0, 0.3)
        while pos < seconds:
            if sound == "boom":
                length, tau, gap = int(1.8 * sr), rng.uniform(0.3, 0.6), rng.uniform(0.5, 0.9)
                ev = _lowpass(rng.standard_normal(length), 1500, sr)
            else:
                length, tau, gap = int(0.08 * sr), rng.uniform(0.01, 0.02), rng.uniform(0.06, 0.15)
                ev = _bandpass(rng.standard_normal(length), 1000, 7000, sr)
            ev *= np.exp(-np.arange(length) / (tau * sr)) / (np.abs(ev).max() + 1e-9)
            start = int(pos * sr)
            stop = min(n, start + length)
            out[start:stop] += rng.uniform(0.5, 1.0) * ev[: stop - start]
            pos += gap
    out = out / (np.abs(out).max() + 1e-9)
    per_second = np.repeat(rng.uniform(0.3, 0.8, int(np.ceil(seconds))), sr)[:n]
    # wind or crowd noise drowns the sound in 10% of the seconds
    loud = rng.random(int(np.ceil(seconds))) < 0.1
    noise = np.repeat(np.where(loud, rng.uniform(0.6, 1.0, loud.size), rng.uniform(0.01, 0.05, loud.size)), sr)[:n]
    return (per_second * out + noise * rng.standard_normal(n)).astype(np.float32)


VISUAL = {"helicopter": "helicopter", "tank": "tank", "bomb": "fire", "gun": "fire"}
SOUND = {"helicopter": "engine", "tank": "engine", "bomb": "boom", "gun": "gunfire"}


def _fetch_video(opts, ctx) -> list[dict]:
    """Demo mp4 videos (`videos/<label>/<id>.mp4`), every video modality reading the same file."""
    unknown = [c for c in ctx.classes if c not in VISUAL]
    if unknown:
        raise ParamsError(f"params.yaml: cases.{ctx.case}.classes: the demo source has no video class "
                          f"{unknown[0]!r} (it makes {', '.join(VISUAL)})")
    rng = np.random.default_rng(ctx.seed)
    rows = []
    jobs = [(label, k) for k in range(opts.videos_per_class) for label in ctx.classes]
    for label, k in tqdm(jobs, desc="demo videos", unit="video"):
        vid = f"demo-{label}-{k}"
        frames = _scene(rng, VISUAL[label], int(opts.seconds * opts.fps), opts.size)
        audio = _soundtrack(rng, SOUND[label], opts.seconds, opts.sample_rate)
        rel = f"videos/{label}/{vid}.mp4"
        ctx.out.mkdir(f"videos/{label}")
        media.write_video(ctx.out.path(rel), frames, opts.fps, audio, opts.sample_rate)
        rows.append({"subject_id": vid, "label": label, **{m: rel for m in ctx.modalities}})
    log.info("wrote %d demo videos of %.0f s", len(rows), opts.seconds)
    return rows


def fetch(opts, ctx) -> list[dict]:
    """The demo case: participants' recordings for an audio case, videos for a video case."""
    return _fetch_video(opts, ctx) if is_video(ctx.info) else _fetch_audio(opts, ctx)
