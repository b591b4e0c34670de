"""Stage `latency`: each layer's batch-1 latency at each of `ilp.bit_choices` on this machine, in the deployed
runtime backend -> models/<case>/latency.json (the ILP's latency budget)."""
import subprocess
import sys
import tempfile
from pathlib import Path

from tinym2net import runtime, tm2
from tinym2net.config import choice, get, positive, section
from tinym2net.errors import DataError
from tinym2net.export import to_artifact
from tinym2net.io import read_json, write_json
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, load_model


def paths(root: Path, case: str) -> dict[str, Path]:
    """Where this stage reads and writes (the one place its paths are built)."""
    return {"fp32": root / "models" / case / "fp32" / "fused.pt",
            "features": root / "data" / "features" / case / "features.npz",
            "table": root / "models" / case / "latency.json"}


def latency(params: dict, case: str, root: Path = Path(".")) -> None:
    cfg = section(params, "latency")
    backend = choice(cfg, "backend", runtime.BACKENDS)
    p = paths(root, case)
    model = load_model(p["fp32"])
    shapes = Features(p["features"], model.modalities).input_shapes()
    header, tensors = to_artifact(model, {"case": case, "variant": "fp32", "classes": params["cases"][case]["classes"],
                                          "input_shapes": shapes, "bits": None})
    with tempfile.TemporaryDirectory() as tmp:
        artifact, out = Path(tmp) / "fp32.tm2", Path(tmp) / "latency.json"
        tm2.write(artifact, header, tensors)
        cmd = [sys.executable, "-m", "tinym2net.latency", str(artifact), "--out", str(out),
               "--bits", *map(str, get(params, "ilp.bit_choices")), "--backend", backend,
               "--threads", str(positive(cfg, "threads", integer=True)),
               "--rounds", str(positive(cfg, "rounds", integer=True)), "--calls", str(positive(cfg, "calls", integer=True))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)  # a fresh process: no torch threads
        if proc.returncode != 0:
            tail = [l for l in proc.stderr.splitlines() if l.strip()][-1:] or [f"exit {proc.returncode}"]
            raise DataError(f"{p['fp32']}: the latency measurement failed ({tail[0][:200]})")
        table = read_json(out)
    write_json(p["table"], table)
    log.info("latency %s (%s): %d layers, constant %.1f us, whole network at %d bits %.1f us; wrote %s", case,
             table["backend_version"], len(table["layers"]), table["constant"], table["reference_bits"],
             table["whole_reference"], p["table"])


if __name__ == "__main__":
    run_stage("latency", latency)
