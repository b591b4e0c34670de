"""The manifest source: paired recordings listed in a CSV of one's own."""
import csv
from pathlib import Path

import numpy as np
import pytest

from tinym2net import media
from tinym2net.errors import DataError, ParamsError
from tinym2net.sources import get_fetcher
from tinym2net.sources.manifest import fetch_paired_audio

CASE = {"modalities": ["cough", "speech"], "classes": ["negative", "positive"]}


def _recordings(root: Path, rows: list[tuple[str, str]]) -> Path:
    """WAV pairs under root/audio/ and a CSV listing them with the given (subject_id, label) rows."""
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    lines = []
    for sid, label in rows:
        for m, sr in (("cough", 16000), ("speech", 44100)):
            media.write_wav(root / "audio" / f"{sid}_{m}.wav", 0.1 * rng.standard_normal(sr // 2), sr)
        lines.append({"subject_id": sid, "label": label, "cough": f"audio/{sid}_cough.wav",
                      "speech": f"audio/{sid}_speech.wav"})
    return _write(root / "list.csv", lines)


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["subject_id", "label", "cough", "speech"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _fetch(listing: Path, out: Path, labels=None) -> dict:
    out.mkdir()
    cfg = {"source": "manifest", "manifest": {"path": str(listing), "labels": labels}}
    fetch_paired_audio(cfg, CASE, out, 0)
    with open(out / "manifest.csv", newline="") as fh:
        return {row["subject_id"]: row for row in csv.DictReader(fh)}


def test_good_csv_is_linked_into_the_raw_layout(tmp_path):
    listing = _recordings(tmp_path / "src", [("s1", "negative"), ("s2", "positive")])
    rows = _fetch(listing, tmp_path / "out")
    assert {s: r["label"] for s, r in rows.items()} == {"s1": "negative", "s2": "positive"}
    audio, sr = media.read_wav(tmp_path / "out" / rows["s2"]["speech"])
    expected, _ = media.read_wav(tmp_path / "src" / "audio" / "s2_speech.wav")
    assert sr == 44100 and np.array_equal(audio, expected)
    assert rows["s1"]["cough"] == "cough/s1.wav"


def test_label_mapping(tmp_path):
    listing = _recordings(tmp_path / "src", [("a", "covid"), ("b", "healthy"), ("c", "unsure")])
    rows = _fetch(listing, tmp_path / "out", labels={"covid": "positive", "healthy": "negative", "unsure": None})
    assert {s: r["label"] for s, r in rows.items()} == {"a": "positive", "b": "negative"}
    with pytest.raises(ParamsError, match=r"fetch\.covid\.manifest\.labels\.covid: 'sick' is not a class"):
        _fetch(listing, tmp_path / "out2", labels={"covid": "sick"})


def test_unknown_label_names_the_row(tmp_path):
    listing = _recordings(tmp_path / "src", [("s1", "negative"), ("s2", "Positive")])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"list\.csv line 3: label 'Positive' is not one of negative, positive"):
        _fetch(listing, out)
    assert list(out.iterdir()) == []  # no partial output


def test_missing_file_names_the_row(tmp_path):
    listing = _recordings(tmp_path / "src", [("s1", "negative"), ("s2", "positive"), ("s3", "negative")])
    (tmp_path / "src" / "audio" / "s3_speech.wav").unlink()
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"list\.csv line 4: speech file 'audio/s3_speech\.wav' not found"):
        _fetch(listing, out)
    assert list(out.iterdir()) == []


def test_empty_recording_names_the_row(tmp_path):
    listing = _recordings(tmp_path / "src", [("s1", "negative")])
    media.write_wav(tmp_path / "src" / "audio" / "s1_cough.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match=r"line 2: cough file 'audio/s1_cough\.wav': audio file is empty"):
        _fetch(listing, tmp_path / "out")


def test_params_select_this_source():
    params = {"cases": {"covid": {"kind": "paired_audio"}}, "fetch": {"covid": {"source": "manifest"}}}
    assert get_fetcher(params, "covid") is fetch_paired_audio
