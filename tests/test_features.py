"""MFCCs: the batched implementation equals librosa's per-clip output on real Coswara recordings."""
import librosa
import numpy as np
import pytest

from tinym2net import media
from tinym2net.features import image_features, mfcc, normalization
from tinym2net.slicing import chunk


@pytest.fixture(scope="module")
def real_chunks(coswara_fixture, tmp_path_factory):
    """2 s chunks at 22,050 Hz of every non-empty real recording (48 and 44.1 kHz originals), read
    straight from the fixture's archive."""
    import tarfile
    out = tmp_path_factory.mktemp("coswara")
    parts = sorted((coswara_fixture / "20200413").glob("20200413.tar.gz.*"))
    (out / "all.tar.gz").write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(out / "all.tar.gz") as tar:
        tar.extractall(out / "raw", filter="data")
    rates, clips = set(), []
    for wav in sorted((out / "raw").rglob("*.wav")):
        if wav.stat().st_size < 100:
            continue
        try:
            audio, sr = media.read_audio(wav, max_seconds=600)
        except media.DataError:
            continue
        rates.add(sr)
        clips.append(chunk(librosa.resample(audio, orig_sr=sr, target_sr=22050), 44100, 11025))
    assert {48000, 44100} <= rates, rates  # (the fixture's 16 kHz files are its empty ones)
    return np.concatenate(clips)


@pytest.mark.parametrize("cfg", [
    {"n_mfcc": 20, "n_fft": 512, "hop_length": 215, "n_mels": 40, "center": False},   # covid cough
    {"n_mfcc": 13, "n_fft": 512, "hop_length": 131, "n_mels": 40, "center": False},   # covid speech
    {"n_mfcc": 13, "n_fft": 2048, "hop_length": 512, "n_mels": 128, "center": True},  # battlefield audio
])
def test_batched_mfcc_equals_librosa_per_clip(real_chunks, cfg):
    batch = real_chunks.copy()
    batch[0] *= 1e-4  # a quiet clip next to loud ones: a batch-wide top_db would clip it
    ours = mfcc(batch, sr=22050, **cfg)
    for i, clip in enumerate(batch):
        ref = librosa.feature.mfcc(y=clip, sr=22050, **cfg)
        np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-3)
    # and the naive batched call is indeed different for the quiet clip
    naive = librosa.feature.mfcc(y=batch, sr=22050, **cfg)
    assert not np.allclose(naive[0], ours[0], atol=1e-2)


def test_frame_counts_match_the_paper(real_chunks):
    clip = real_chunks[:1]
    assert mfcc(clip, sr=22050, n_mfcc=20, n_fft=512, hop_length=215, n_mels=40, center=False).shape[1:] == (20, 203)
    assert mfcc(clip, sr=22050, n_mfcc=13, n_fft=512, hop_length=131, n_mels=40, center=False).shape[1:] == (13, 333)
    assert mfcc(clip[:, :22050], sr=22050, n_mfcc=13, n_fft=2048, hop_length=512, n_mels=128,
                center=True).shape[1:] == (13, 44)


def test_images_are_area_resized_to_channels_first():
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[:, :32, :32, 0] = 255
    x = image_features(frames, 32)
    assert x.shape == (2, 3, 32, 32)
    assert x[0, 0, :16, :16].min() == 1.0 and x[0, 0, 16:, 16:].max() == 0.0 and x[0, 1].max() == 0.0


def test_normalization_uses_given_rows_only():
    x = np.arange(24, dtype=np.float32).reshape(4, 1, 3, 2)
    mean, std = normalization(x[:2], (0, 1, 2))
    assert mean.shape == (1, 1, 1, 2)
    np.testing.assert_allclose(mean.ravel(), x[:2].reshape(-1, 2).mean(0))
