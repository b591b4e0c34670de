"""Stage `latency`: each layer's batch-1 latency at each of `ilp.bit_choices` on this machine, in the deployed
runtime backend, for partition 0's model -> models/<case>/latency.json (the ILP's latency budget)."""
import subprocess
import sys
import tempfile
from pathlib import Path

from tinym2net import tm2
from tinym2net.errors import DataError
from tinym2net.export import to_artifact
from tinym2net.io import Outputs, read_json
from tinym2net.params import Params
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, load_model

OUTPUTS = ["models/{case}/latency.json"]
PARTITION = 0  # the deployed model is partition 0's


def latency(params: Params, case: str, root: Path = Path(".")) -> None:
    cfg, info = params.latency, params.cases[case]
    root = Path(root)
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    fp32 = root / "models" / case / "trained" / f"p{PARTITION}" / f"{info.models[0]}.pt"
    model = load_model(fp32)
    shapes = Features(root / "data" / "features" / case / "features.npz", model.modalities, PARTITION).input_shapes()
    header, tensors = to_artifact(model, {"case": case, "variant": "fp32", "classes": info.classes,
                                          "input_shapes": shapes, "bits": None})
    with tempfile.TemporaryDirectory() as tmp:
        artifact, out = Path(tmp) / "fp32.tm2", Path(tmp) / "latency.json"
        tm2.write(artifact, header, tensors)
        cmd = [sys.executable, "-m", "tinym2net.latency", str(artifact), "--out", str(out),
               "--bits", *map(str, params.ilp.bit_choices), "--backend", cfg.backend, "--threads", str(cfg.threads),
               "--rounds", str(cfg.rounds), "--calls", str(cfg.calls)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)  # a fresh process: no torch threads
        if proc.returncode != 0:
            tail = [l for l in proc.stderr.splitlines() if l.strip()][-1:] or [f"exit {proc.returncode}"]
            raise DataError(f"{fp32}: the latency measurement failed ({tail[0][:200]})")
        table = read_json(out)
    outs.write_json(f"models/{case}/latency.json", table)
    log.info("latency %s (%s): %d layers, constant %.1f us, whole network at %d bits %.1f us; wrote models/%s/latency.json",
             case, table["backend_version"], len(table["layers"]), table["constant"], table["reference_bits"],
             table["whole_reference"], case)


if __name__ == "__main__":
    run_stage("latency", latency)
