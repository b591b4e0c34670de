"""params.yaml: loading, per-case sections, and validation that names the offending key."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .errors import ParamsError

PARAMS_FILE = "params.yaml"


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """Read params.yaml; a missing or malformed file is a ParamsError naming it."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


class Section(dict):
    """A params.yaml sub-mapping that remembers its dotted key, so that errors name the full key."""

    def __init__(self, data: dict, key: str):
        super().__init__(data)
        self.key = key


def section(params: dict, key: str) -> Section:
    """The mapping at `key` (e.g. `fetch.covid`) as a Section."""
    value = get(params, key)
    if not isinstance(value, dict):
        raise ParamsError(f"params.yaml: {full_key(params, key)} must be a mapping")
    return Section(value, full_key(params, key))


def full_key(params: dict, key: str) -> str:
    prefix = getattr(params, "key", "")
    return f"{prefix}.{key}" if prefix else key


def get(params: dict, key: str) -> Any:
    """Look up a dotted key (`slice.covid.chunk_seconds`); missing keys raise ParamsError."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml: missing key {full_key(params, key)}")
        node = node[part]
    return node


def merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base` (how tests shrink the configuration)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def positive(params: dict, key: str, *, integer: bool = False, allow_zero: bool = False):
    """Return the number at `key`, refusing zero/negative (or non-integer) values by name."""
    value = get(params, key)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ParamsError(f"params.yaml: {full_key(params, key)} must be "
                          f"{'an integer' if integer else 'a number'} (got {value!r})")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ParamsError(f"params.yaml: {full_key(params, key)} must be {bound} (got {value!r})")
    return value


def fraction(params: dict, key: str) -> float:
    """Return the number at `key`, which must lie in [0, 1)."""
    value = get(params, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ParamsError(f"params.yaml: {full_key(params, key)} must be a fraction in [0, 1) (got {value!r})")
    return float(value)


def choice(params: dict, key: str, options) -> str:
    """Return the string at `key`, which must be one of `options`."""
    value = get(params, key)
    if value not in options:
        raise ParamsError(f"params.yaml: {full_key(params, key)}: unknown value {value!r} "
                          f"(choose from {', '.join(sorted(options))})")
    return value


def case_info(params: dict, case: str) -> dict:
    """The `cases.<case>` entry: kind, modalities, classes."""
    if case not in get(params, "cases"):
        raise ParamsError(f"params.yaml: cases.{case}: unknown case (choose from {', '.join(params['cases'])})")
    return get(params, f"cases.{case}")
