"""Parameter and MAC counts of micromind's PhiNet and XiNet: the independent reference of tests/test_backbones.py.

micromind cannot be installed here (it needs torchvision and torchaudio), and its code stays out of this
repository. Its two network files need only torch and torchinfo, so this script loads them from a folder:

    pip download micromind==0.2.1 --no-deps -d /tmp/mm && python -m zipfile -e /tmp/mm/*.whl /tmp/mm/x
    pip install --target /tmp/mm/pkgs --no-deps torchinfo==1.8.0
    PYTHONPATH=/tmp/mm/pkgs python scripts/micromind_counts.py /tmp/mm/x/micromind/networks > tests/data/micromind_counts.json

For each setting it records micromind's own figures (torchinfo's `total_params` and `total_mult_adds`,
as `get_complexity` reports them; torchinfo adds each BatchNorm's weight and bias once per sample to
the multiply-adds) and the conv/linear multiply-accumulates counted with forward hooks.
"""
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import torch

PHINET = [  # (input_shape, keyword arguments); the first is the published figure (30,917 params, 9,817,670 MACs)
    ((3, 224, 224), {}),
    ((3, 224, 224), {"compatibility": True}),
    ((1, 32, 32), {"alpha": 0.5, "beta": 0.75, "t_zero": 5, "num_layers": 7, "compatibility": True}),
    ((1, 203, 20), {"alpha": 0.25, "beta": 1.0, "t_zero": 6, "num_layers": 7, "compatibility": True}),
    ((3, 32, 32), {"alpha": 1.0, "beta": 0.5, "t_zero": 4, "num_layers": 9, "downsampling_layers": [5, 7],
                   "squeeze_excite": True, "h_swish": False}),
    ((1, 44, 13), {"alpha": 0.35, "beta": 1.5, "t_zero": 3, "num_layers": 5, "downsampling_layers": [5],
                   "squeeze_excite": False, "h_swish": True}),
    ((1, 96, 96), {"alpha": 0.75, "beta": 0.8, "t_zero": 6, "num_layers": 8, "downsampling_layers": [6, 8],
                   "compatibility": True}),
]
XINET = [
    ((3, 224, 224), {}),
    ((1, 32, 32), {"alpha": 0.5, "gamma": 4, "num_layers": 5}),
    ((3, 32, 32), {"alpha": 0.25, "gamma": 2, "num_layers": 4}),
    ((1, 64, 32), {"alpha": 0.75, "gamma": 4, "num_layers": 3}),
    ((1, 96, 96), {"alpha": 1.5, "gamma": 3, "num_layers": 6}),
    ((3, 128, 64), {"alpha": 0.4, "gamma": 4, "num_layers": 5}),
]


def _load(folder: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"micromind_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hook_macs(model, x) -> int:
    total = 0

    def record(module, args, out):
        nonlocal total
        total += out.numel() * module.weight[0].numel()

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def counts(cls, settings):
    from torchinfo import summary

    out = []
    for shape, kwargs in settings:
        torch.manual_seed(0)
        model = cls(input_shape=shape, **kwargs)
        x = torch.zeros(1, *shape)
        info = summary(model, input_data=x, verbose=0)
        out.append({"input_shape": list(shape), "kwargs": kwargs, "params": int(info.total_params),
                    "torchinfo_mult_adds": int(info.total_mult_adds), "conv_linear_macs": _hook_macs(model, x)})
    return out


def main(folder: str) -> None:
    folder = Path(folder)
    import torchinfo
    from importlib.metadata import version
    result = {"source": "micromind 0.2.1 (PyPI wheel micromind-0.2.1-py3-none-any.whl, sha256 "
                        "4e3bacbf212e79c9df05ce2ed91781dda58e357075745b81b44fa1dab02dd6d6)",
              "files": {f"micromind/networks/{n}.py": hashlib.sha256((folder / f"{n}.py").read_bytes()).hexdigest()
                        for n in ("phinet", "xinet")},
              "command": "PYTHONPATH=<torchinfo> python scripts/micromind_counts.py <micromind/networks>",
              "torch": torch.__version__, "torchinfo": version("torchinfo"),
              "note": "torchinfo_mult_adds = conv_linear_macs + the BatchNorm weights and biases (once per sample)",
              "phinet": counts(_load(folder, "phinet").PhiNet, PHINET),
              "xinet": counts(_load(folder, "xinet").XiNet, XINET)}
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
