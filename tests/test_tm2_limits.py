"""Hostile `.tm2` files (valid magic, lengths and CRC; a zlib bomb or a deeply nested header) are refused with
one line before the memory is spent: the reading process's own peak resident memory (VmHWM) stays under 100 MB."""
import json
import struct
import subprocess
import sys
import textwrap
import zlib

import pytest
import yaml

from tinym2net import tm2
from tinym2net.errors import ModelFileError, ParamsError

FILE_BYTES = 2 * 2 ** 20
PEAK_LIMIT_MB = 100


def hostile(path, compressed_header: bytes, size: int = FILE_BYTES):
    """A `.tm2` of exactly `size` bytes whose header is `compressed_header`, consistent in every length and CRC."""
    payload = b"\0" * (size - struct.calcsize("<4sHHIQ") - len(compressed_header) - 4)
    body = struct.pack("<4sHHIQ", tm2.MAGIC, tm2.VERSION, 0, len(compressed_header), len(payload)) \
        + compressed_header + payload
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    return path


def bomb(megabytes: int) -> bytes:
    """A JSON header '{"x": "<spaces>"}' of `megabytes` MiB, zlib-compressed (about 1000:1)."""
    c = zlib.compressobj(9)
    chunk = b" " * 2 ** 20
    parts = [c.compress(b'{"x":"')] + [c.compress(chunk) for _ in range(megabytes)]
    return b"".join(parts + [c.compress(b'"}'), c.flush()])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    gib_bomb = bomb(1024)  # 1 GiB of header in 1.0 MB: under max_header_bytes, over max_header_json_bytes
    assert len(gib_bomb) < tm2.DEFAULT_LIMITS.max_header_bytes
    deep = zlib.compress(b"[" * 2_000_000 + b"]" * 2_000_000, 9)  # 4 MB of nesting: RecursionError in json
    wide = zlib.compress(b"[" * 100 + b"]" * 100)  # depth 100: small, under the size limits
    return {"bomb": hostile(tmp / "bomb.tm2", gib_bomb), "deep": hostile(tmp / "deep.tm2", deep),
            "nested": hostile(tmp / "nested.tm2", wide), "big_header": hostile(tmp / "big.tm2", bytes(FILE_BYTES - 64)),
            "small_bomb": hostile(tmp / "small_bomb.tm2", bomb(128))}


READ = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tinym2net import tm2
    from tinym2net.errors import ModelFileError
    limits = tm2.Limits.from_dict(json.loads(sys.argv[2]))
    try:
        tm2.read(sys.argv[1], limits)
        error = None
    except ModelFileError as exc:
        error = str(exc)
    status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
    print(json.dumps({"error": error, "peak_mb": int(status["VmHWM"].split()[0]) / 1024}))
""")


def read_in_subprocess(path, limits: dict | None = None) -> dict:
    """tm2.read in a fresh interpreter; its error and its own peak resident memory (VmHWM, MB)."""
    proc = subprocess.run([sys.executable, "-c", READ, str(path), json.dumps(limits or {})], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name, text", [
    ("bomb", "decompresses to more than 4194304 bytes (max_header_json_bytes)"),
    ("deep", "nests 2000000 levels deep, over the limit of 32 (max_header_depth)"),
    ("nested", "nests 100 levels deep"),
    ("big_header", "exceeds the limit of 1048576 (max_header_bytes)"),
])
def test_hostile_file_is_one_line_error_within_100_mb(files, name, text):
    path = files[name]
    assert path.stat().st_size == FILE_BYTES
    answer = read_in_subprocess(path)
    assert answer["error"] and text in answer["error"] and str(path) in answer["error"]
    assert "\n" not in answer["error"]
    assert answer["peak_mb"] < PEAK_LIMIT_MB, answer


def test_the_memory_measurement_sees_an_unbounded_read(files):
    """Control: with the decompressed-size bound raised, a 128 MiB bomb is inflated and the peak shows it."""
    answer = read_in_subprocess(files["small_bomb"], {"max_header_json_bytes": 2 ** 30})
    assert answer["peak_mb"] > PEAK_LIMIT_MB, answer
    assert read_in_subprocess(files["small_bomb"])["peak_mb"] < PEAK_LIMIT_MB


def test_file_size_bound_is_checked_before_reading(files):
    answer = read_in_subprocess(files["bomb"], {"max_file_bytes": 2 ** 20})
    assert "exceeds the limit of 1048576 (max_file_bytes)" in answer["error"]


def test_json_depth_ignores_brackets_in_strings():
    assert tm2.json_depth(b'{"a": "[[[[{{{{", "b": [1, [2]]}') == 3
    assert tm2.json_depth(b'"\\\\"') == 0 and tm2.json_depth(b'[["\\"["]]') == 2


def test_limits_in_params_match_the_defaults_and_are_validated(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert tm2.Limits.from_dict(params["export"]["tm2_limits"]) == tm2.DEFAULT_LIMITS
    with pytest.raises(ParamsError, match=r"export.tm2_limits.max_header_depth must be a positive integer"):
        tm2.Limits.from_dict({"max_header_depth": 0})
    with pytest.raises(ParamsError, match=r"export.tm2_limits.max_depth: unknown limit"):
        tm2.Limits.from_dict({"max_depth": 3})


def test_corrupt_zlib_and_json_are_one_line_errors(tmp_path):
    with pytest.raises(ModelFileError, match="corrupt header .zlib"):
        tm2.read(hostile(tmp_path / "a.tm2", b"not zlib at all", 4096))
    with pytest.raises(ModelFileError, match="corrupt header .JSONDecodeError"):
        tm2.read(hostile(tmp_path / "b.tm2", zlib.compress(b'{"tensors": {'), 4096))
    with pytest.raises(ModelFileError, match="no tensor table"):
        tm2.read(hostile(tmp_path / "c.tm2", zlib.compress(b'[1, 2]'), 4096))
