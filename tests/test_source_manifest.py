"""The manifest source: your own recordings, pictures or videos listed in a CSV, with your split and groups."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_no_output, fetch_with
from tinym2net import media
from tinym2net.errors import DataError, ParamsError


def _recordings(root: Path, rows: list[tuple], columns=("cough", "speech")) -> Path:
    """WAVs under root/audio/ and a CSV listing them: rows of (subject_id, label[, split, group])."""
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for sid, label, *rest in rows:
        line = {"subject_id": sid, "label": label}
        for m, sr in zip(columns, (16000, 44100, 8000)):
            media.write_wav(root / "audio" / f"{sid}_{m}.wav", 0.1 * rng.standard_normal(sr // 2), sr)
            line[m] = f"audio/{sid}_{m}.wav"
        line.update(zip(("split", "group"), rest))
        lines.append(line)
    return _write(root / "list.csv", lines)


def _write(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def fetch(small_params, tmp_path):
    def run(listing: Path, labels=None, **fetch_over):
        return fetch_with(small_params, tmp_path / "project", "covid", "manifest",
                          {"path": str(listing), "labels": labels}, {"fetch": {"covid": fetch_over}})
    return run


def test_good_csv_is_copied_into_the_raw_layout(tmp_path, fetch):
    listing = _recordings(tmp_path / "src", [("s1", "negative"), ("s2", "positive")])
    raw, rows = fetch(listing)
    assert {s: r["label"] for s, r in rows.items()} == {"s1": "negative", "s2": "positive"}
    audio, sr = media.read_audio(raw / rows["s2"]["speech"], max_seconds=60)
    expected, _ = media.read_audio(tmp_path / "src" / "audio" / "s2_speech.wav", max_seconds=60)
    assert sr == 44100 and np.array_equal(audio, expected)
    assert not (raw / rows["s2"]["speech"]).is_symlink()   # a copy: the user's file is never touched


def test_split_and_group_columns_are_kept(tmp_path, fetch):
    listing = _recordings(tmp_path / "src", [("s1", "negative", "train", "call"), ("s2", "positive", "test", "app")])
    _, rows = fetch(listing)
    assert (rows["s1"]["split"], rows["s1"]["group"], rows["s2"]["split"], rows["s2"]["group"]) == \
        ("train", "call", "test", "app")


def test_label_map_drops_and_renames(tmp_path, fetch):
    listing = _recordings(tmp_path / "src", [("a", "covid"), ("b", "healthy"), ("c", "unknown")])
    _, rows = fetch(listing, labels={"covid": "positive", "healthy": "negative", "unknown": None})
    assert {s: r["label"] for s, r in rows.items()} == {"a": "positive", "b": "negative"}


@pytest.mark.parametrize("sid, path, message", [
    ("../x", "audio/s1_cough.wav", "subject_id '../x' must be"),
    ("s1", "../../etc/passwd", "path '../../etc/passwd' must be relative to"),
    ("s1", "/etc/passwd", "path '/etc/passwd' must be relative to"),
    ("s1", "audio/nope.wav", "cough file 'audio/nope.wav' not found"),
])
def test_unsafe_ids_and_paths_are_refused(tmp_path, fetch, sid, path, message):
    _recordings(tmp_path / "src", [("s1", "negative")])
    listing = _write(tmp_path / "src" / "bad.csv", [{"subject_id": sid, "label": "negative", "cough": path,
                                                    "speech": "audio/s1_speech.wav"}])
    with pytest.raises(DataError, match=message) as err:
        fetch(listing)
    assert "bad.csv line 2" in str(err.value) and "\n" not in str(err.value)
    assert_no_output(tmp_path / "project" / "data" / "raw" / "covid")


def _damaged(tmp_path) -> Path:
    """Five good rows and three bad files: an empty one, a truncated MP3 and a text file named .wav."""
    src = tmp_path / "src"
    listing = _recordings(src, [(f"s{i}", "negative" if i % 2 else "positive") for i in range(5)] +
                          [("empty", "negative"), ("cut", "positive"), ("text", "negative")])
    (src / "audio" / "empty_cough.wav").write_bytes(b"")
    mp3 = sorted(Path("/work/shared/fixtures/cough_cc0/raw").glob("*.mp3"))[0].read_bytes()
    (src / "audio" / "cut_cough.mp3").write_bytes(mp3[: len(mp3) // 3])
    (src / "audio" / "text_cough.wav").write_text("this is not a recording\n" * 20)
    text = listing.read_text().replace("audio/cut_cough.wav", "audio/cut_cough.mp3")
    listing.write_text(text)
    return listing


def test_on_error_skip_keeps_the_rest_and_names_every_bad_file(tmp_path, fetch):
    listing = _damaged(tmp_path)
    raw, rows = fetch(listing, on_error="skip")
    assert sorted(rows) == [f"s{i}" for i in range(5)]
    report = json.loads((tmp_path / "project" / "metrics" / "covid" / "fetch.json").read_text())
    assert report["skipped"] == 3 and report["subjects"] == 5
    reasons = {r["where"].rsplit(" ", 1)[-1]: r["reason"] for r in report["skipped_files"]}
    assert "empty file (0 bytes)" in reasons["7"]
    assert "truncated" in reasons["8"] and "cut_cough.mp3" in reasons["8"]
    assert "not an audio file" in reasons["9"]


def test_on_error_fail_stops_at_the_first_with_what_is_wrong(tmp_path, fetch):
    with pytest.raises(DataError, match=r"list\.csv line 7: cough file 'audio/empty_cough\.wav': empty file \(0 bytes\)$"):
        fetch(_damaged(tmp_path))
    assert_no_output(tmp_path / "project" / "data" / "raw" / "covid")


def test_bad_label_and_params(tmp_path, fetch):
    listing = _recordings(tmp_path / "src", [("s1", "maybe")])
    with pytest.raises(DataError, match=r"label 'maybe' is not one of negative, positive \(map it in fetch\.covid\.manifest\.labels\)"):
        fetch(listing)
    with pytest.raises(ParamsError, match=r"fetch\.covid\.manifest\.labels\.maybe: 'sick' is not a class"):
        fetch(listing, labels={"maybe": "sick"})


def test_a_subject_with_two_labels_is_refused(tmp_path, fetch):
    listing = _recordings(tmp_path / "src", [("s1", "negative")])
    rows = list(csv.DictReader(open(listing)))
    _write(listing, rows + [{**rows[0], "label": "positive"}])
    with pytest.raises(DataError, match="subject s1 has rows with label 'negative' and 'positive'"):
        fetch(listing)
