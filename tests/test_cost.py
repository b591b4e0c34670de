"""The cost model against the artifact and the runtime: Flash = the exported file (payload exact, header
measured), peak RAM = the activation memory of the graph LiteRT runs (within its documented scratch), MACs =
the hooks' count of the sensitivity stage."""
import struct

import pytest
import torch

from tinym2net import cost, tm2
from tinym2net.backends import litert
from tinym2net.export import export
from tinym2net.hessian import layer_macs
from tinym2net.model import build
from tinym2net.quant import quantizable_layers, quantize_model

CASES = {
    "covid": ({"cough": (1, 203, 20), "speech": (1, 333, 13)}, ["negative", "positive"]),
    "battlefield": ({"image": (3, 32, 32), "audio": (1, 44, 13)}, ["helicopter", "bomb", "gun", "tank"]),
}
# the same cost model on the other backbones (residual adds, relu6, PAD copies, tensors read by several layers)
BACKBONES = {
    "phinet": {"type": "phinet", "alpha": 0.5, "beta": 1.0, "t0": 4, "num_layers": 5, "downsampling_layers": [5],
               "dense": 32},
    "xinet": {"type": "xinet", "alpha": 0.5, "gamma": 4, "num_layers": 3, "dense": 32},
}


def train_cfg(small_params, name):
    case = name.split("-")[0]
    if "-" not in name:
        return case, small_params["train"][case]
    branch = BACKBONES[name.split("-")[1]]
    return case, {"branches": {m: branch for m in CASES[case][0]}, "head": [32], "dropout": 0.0}


def allocations(names):
    return {
        "w8": dict.fromkeys(names, 8),
        "w4": dict.fromkeys(names, 4),
        "mixed": {n: 8 if n.endswith("conv1.conv") or n == "head.out" else 4 for n in names},
        # float first convolutions and first depthwise: float -> int8 boundaries inside each branch
        "float-mixed": {n: 32 if n.endswith("conv1.conv") or n.endswith("sepconv2.dw") else 8 if n == "head.out"
                        else 4 for n in names},
        "thirds": {n: [32, 4, 8][i % 3] for i, n in enumerate(names)},
    }


@pytest.fixture(scope="module", params=[*CASES, "covid-phinet", "covid-xinet"])
def exported(request, small_params, tmp_path_factory):
    """Each allocation of a (randomly initialised, randomly calibrated) network, exported."""
    case, cfg = train_cfg(small_params, request.param)
    shapes, classes = CASES[case]
    torch.manual_seed(0)
    model = build(cfg, shapes, len(classes)).eval()
    out = []
    for label, bits in allocations(list(quantizable_layers(model))).items():
        batch = ({m: torch.randn(4, *s) for m, s in shapes.items()}, torch.zeros(4, dtype=torch.long))
        q = quantize_model(model, bits, [batch])
        path = tmp_path_factory.mktemp(case) / f"{label}.tm2"
        size = export(q, path, case=case, variant=label, classes=classes, input_shapes=shapes, bits=bits)
        out.append((label, bits, cost.analyse(q, shapes, case, label, classes), path, size))
    return request.param, model, shapes, out


def test_flash_is_the_file_size(exported):
    for label, bits, costs, path, size in exported[3]:
        assert path.stat().st_size == size
        _, _, _, head_len, payload_len = struct.unpack_from("<4sHHIQ", path.read_bytes())
        assert costs.payload_bytes(bits) == payload_len, label                  # exact
        assert costs.header_bytes(bits) == pytest.approx(head_len + cost.TM2_FRAMING_BYTES, abs=cost.HEADER_SLACK)
        assert abs(costs.flash_bytes(bits) - size) <= cost.HEADER_SLACK


def test_peak_ram_is_what_litert_holds(exported):
    for label, bits, costs, path, _ in exported[3]:
        if "-" in exported[0] and 32 in bits.values():
            continue  # float layers inside PhiNet/XiNet blocks add DEQUANTIZE/MUL copies the scratch does not bound
        plan = cost.litert_plan(litert.build(tm2.read(path)))
        int8 = costs.peak_ram_bytes(bits, "int8")
        if all(b != 32 for b in bits.values()) and "-" not in exported[0]:
            assert plan["peak_bytes"] == int8, label   # DS-CNN, all int8: the same buffers, the same peak
            assert costs.runtime_scratch(bits) == 0
        assert int8 <= plan["peak_bytes"] <= int8 + costs.runtime_scratch(bits), label
        # packed 4-bit activations take half the bytes of their int8 storage
        assert costs.peak_ram_bytes(bits) <= int8


def test_peak_ram_by_hand_and_macs_against_the_hooks(exported):
    """covid W8: the speech branch's depthwise step holds conv1's output and its own (331x11x64 + 329x9x64 bytes)
    and the cough branch's 32 outputs; MACs equal the forward hooks' count."""
    case, model, shapes, out = exported
    costs = {label: c for label, _, c, _, _ in out}["w8"]
    if case == "covid":
        assert costs.peak_ram_bytes(8) == 331 * 11 * 64 + 329 * 9 * 64 + 32
        assert costs.peak_step(8) == "branches.speech.features.sepconv2.dw"
        assert costs.peak_ram_bytes(4) == (331 * 11 * 64 + 329 * 9 * 64 + 32) // 2
    example = {m: torch.zeros(1, *s) for m, s in shapes.items()}
    hooks = layer_macs(model, example)
    assert {l.name: l.macs for l in costs.layers} == hooks
    assert costs.bops(4) == 16 * costs.macs()


def test_step_ram_is_linear_in_the_widths(exported):
    """The schedule the ILP reads reproduces every step's RAM at any widths."""
    for label, bits, costs, _, _ in exported[3]:
        schedule = costs.memory_schedule()
        for k, step in enumerate(schedule["steps"]):
            total = step["constant"] + sum(cost.activation_bytes(e, bits[layer]) for layer, elems in step["buffers"].items()
                                           for e in elems)
            assert total == costs.step_ram(bits)[k]
