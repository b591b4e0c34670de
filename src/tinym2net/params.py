"""The schema of params.yaml (pydantic): every section, type, range and cross-field rule, checked once
when a stage starts. A failure is one line naming the key and what it accepts.

Per-case sections (`fetch`, `slice`, `featurize`, `train`) hold one entry per case of `cases`; a
modality's kind decides how it is sliced and featurized:

- `audio`: a recording (WAV, FLAC, OGG, MP3), cut into chunks of `slice.<case>.chunk_seconds`;
- `image`: a picture (PNG, JPEG), one segment;
- `video_frame` / `video_audio`: one frame per second of a video and the second of audio after it,
  aligned in time (a case's modalities are all video kinds or none).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, ValidationError,
                      field_validator, model_validator)

from .errors import ParamsError
from .ids import SAFE_ID

PARAMS_FILE = "params.yaml"

NonNegInt = Annotated[int, Field(ge=0, strict=True)]
PosInt = Annotated[int, Field(gt=0, strict=True)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Name = Annotated[str, StringConstraints(pattern=SAFE_ID.pattern)]
Kind = Literal["audio", "image", "video_frame", "video_audio"]
VIDEO_KINDS = ("video_frame", "video_audio")
AUDIO_KINDS = ("audio", "video_audio")  # featurized as MFCCs
OnError = Literal["fail", "skip"]


class Schema(BaseModel):
    """Unknown keys are errors (a typo never silently falls back to a default)."""
    model_config = ConfigDict(extra="forbid", strict=False)


# ----------------------------------------------------------------------------- cases

class Case(Schema):
    classes: list[Name] = Field(min_length=2)
    modalities: dict[Name, Kind] = Field(min_length=1)

    @field_validator("classes")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"class names must be distinct (got {v})")
        return v

    @model_validator(mode="after")
    def _kinds(self):
        video = [k in VIDEO_KINDS for k in self.modalities.values()]
        if any(video) and not all(video):
            raise ValueError("modalities are either all video kinds (video_frame, video_audio) or none: "
                             f"got {self.modalities}")
        return self

    @property
    def video(self) -> bool:
        return all(k in VIDEO_KINDS for k in self.modalities.values())

    @property
    def models(self) -> list[str]:
        """The models trained for the case: the fused model and one baseline per modality, or the
        single-branch model of a one-modality case (named after it). The first is the one deployed."""
        return ["fused", *self.modalities] if len(self.modalities) > 1 else list(self.modalities)


class Seeds(Schema):
    data: NonNegInt   # demo data, the samples drawn per subject
    split: NonNegInt  # partition p: split + p
    train: NonNegInt  # partition p: train + p (initialisation, batches, dropout); sensitivity, quantize


class Limits(Schema):
    recording_seconds: PosFloat   # longest audio recording or video read
    archive_member_mb: PosFloat   # largest single file extracted from an archive
    extract_total_mb: PosFloat    # all bytes one fetch may extract from archives
    image_pixels: PosInt          # largest picture decoded (width x height)


# ----------------------------------------------------------------------------- fetch

class DemoAudio(Schema):
    participants: PosInt
    positive_fraction: Fraction
    sample_rates: list[Annotated[int, Field(ge=4000, le=384000, strict=True)]] = Field(min_length=1)
    date: Annotated[str, StringConstraints(pattern=r"^\d{8}$")]
    seconds: dict[Name, tuple[PosFloat, PosFloat]]   # recording length range per modality

    @field_validator("seconds")
    @classmethod
    def _ranges(cls, v):
        for name, (lo, hi) in v.items():
            if lo > hi:
                raise ValueError(f"{name}: [min, max] with min <= max (got [{lo}, {hi}])")
        return v


class DemoVideo(Schema):
    videos_per_class: PosInt
    seconds: PosFloat
    fps: PosInt
    size: Annotated[int, Field(ge=8, le=1024, strict=True)]
    sample_rate: Annotated[int, Field(ge=4000, le=384000, strict=True)]


class Coswara(Schema):
    path: str | None
    url: str | None
    cache_dir: str
    dates: list[Annotated[str, StringConstraints(pattern=r"^\d{8}$")]] | None
    recordings: dict[Name, Annotated[str, StringConstraints(pattern=SAFE_ID.pattern)]]
    min_quality: Literal[0, 1, 2]
    labels: dict[str, Name | None] = Field(min_length=1)

    @field_validator("dates", mode="before")
    @classmethod
    def _dates_as_text(cls, v):
        return [str(d) for d in v] if isinstance(v, list) else v


class Manifest(Schema):
    path: str | None
    labels: dict[str, Name | None] | None


class Folder(Schema):
    path: str | None


class Youtube(Schema):
    manifest: str | None
    mad_labels: dict[int, Name]
    cache_dir: str
    format: str
    retries: NonNegInt
    backoff_seconds: NonNegFloat
    socket_timeout: PosFloat


SOURCES = {"demo": None, "coswara": Coswara, "manifest": Manifest, "folder": Folder, "youtube": Youtube}
# the sources that can give each case shape: audio-only cases, image cases, video cases
SOURCE_KINDS = {"demo": {"audio", "video"}, "coswara": {"audio"}, "manifest": {"audio", "image", "video"},
                "folder": {"audio", "image", "video"}, "youtube": {"video"}}


class Fetch(Schema):
    source: Literal["demo", "coswara", "manifest", "folder", "youtube"]
    on_error: OnError
    demo: dict | DemoAudio | DemoVideo | None = None   # validated as DemoAudio or DemoVideo by the case's kinds
    coswara: Coswara | None = None
    manifest: Manifest | None = None
    folder: Folder | None = None
    youtube: Youtube | None = None

    @model_validator(mode="after")
    def _chosen_section(self):
        if getattr(self, self.source) is None:
            raise ValueError(f"source {self.source!r} needs its section {self.source}: (see README, Data sources)")
        return self


# ----------------------------------------------------------------------------- slice

class MinSubjects(Schema):
    train: PosInt      # a class the model never sees cannot be learnt
    val: NonNegInt
    test: NonNegInt


class Split(Schema):
    strategy: Literal["subject", "time_blocks", "random"]
    val: Fraction
    test: Fraction
    block_seconds: PosFloat | None = None
    gap_seconds: NonNegFloat | None = None
    stratify_by_group: bool = False
    min_subjects: MinSubjects

    @model_validator(mode="after")
    def _fractions(self):
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must leave a train split (got val {self.val:g} + test {self.test:g} >= 1)")
        if self.val == 0:
            raise ValueError("val must be > 0: early stopping needs a validation split")
        if self.test == 0:
            raise ValueError("test must be > 0: every figure is measured on the test split")
        if self.strategy == "time_blocks" and (self.block_seconds is None or self.gap_seconds is None):
            raise ValueError("strategy time_blocks needs block_seconds and gap_seconds")
        return self


class Slice(Schema):
    sample_rate: Annotated[int, Field(ge=4000, le=384000, strict=True)]
    chunk_seconds: PosFloat | None = None       # audio kinds
    min_seconds: NonNegFloat | None = None      # audio kinds: shorter recordings are dropped
    samples_per_subject: PosInt
    frame_size: Annotated[int, Field(ge=8, le=1024, strict=True)] | None = None  # image and video kinds
    split: Split

    @model_validator(mode="after")
    def _chunk(self):
        if self.chunk_seconds is not None:
            if self.chunk_seconds * self.sample_rate < 64:
                raise ValueError(f"chunk_seconds {self.chunk_seconds:g} is under 64 samples at {self.sample_rate} Hz")
            if self.min_seconds is not None and self.min_seconds > self.chunk_seconds:
                raise ValueError("min_seconds must not exceed chunk_seconds")
        return self


# ----------------------------------------------------------------------------- featurize

class Mfcc(Schema):
    type: Literal["mfcc"]
    n_mfcc: PosInt
    n_fft: Annotated[int, Field(ge=16, strict=True)]
    hop_length: PosInt
    n_mels: PosInt
    center: bool

    @model_validator(mode="after")
    def _bands(self):
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc {self.n_mfcc} exceeds n_mels {self.n_mels}")
        return self


class Image(Schema):
    type: Literal["image"]
    size: Annotated[int, Field(ge=4, le=512, strict=True)]


class Featurize(Schema):
    """`batch_size` and one feature spec per modality (keyed by modality name; validated as Mfcc or
    Image by the modality's kind, in Params)."""
    model_config = ConfigDict(extra="allow")
    batch_size: PosInt

    def spec(self, modality: str) -> Mfcc | Image:
        return self.model_extra[modality]

    @property
    def modalities(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class _Nested(ValueError):
    """A validation error inside a dynamically keyed entry, keeping its location."""

    def __init__(self, loc: tuple, msg: str, value: Any):
        super().__init__(msg)
        self.loc, self.value = loc, value


def _sub(model: type[BaseModel], raw: dict, *prefix):
    """`raw` validated as `model`; its first error keeps its location under `prefix`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise _Nested(tuple(prefix) + tuple(err["loc"]), err["msg"].removeprefix("Value error, "),
                      err.get("input")) from None


# ----------------------------------------------------------------------------- train

Layer = Union[tuple[Literal["conv", "sepconv"], PosInt, PosInt], tuple[Literal["maxpool"], PosInt]]


class Dscnn(Schema):
    """The paper's branch: a list of conv / sepconv / maxpool layers."""
    type: Literal["dscnn"] = "dscnn"
    padding: Literal["valid", "same"]
    layers: list[Layer] = Field(min_length=1)
    dense: PosInt


class Phinet(Schema):
    """A PhiNet backbone (phinet.py): width alpha, expansion t0 growing to beta t0, num_layers blocks."""
    type: Literal["phinet"]
    alpha: PosFloat
    beta: PosFloat
    t0: PosFloat
    num_layers: Annotated[int, Field(ge=3, strict=True)]
    downsampling_layers: list[PosInt]
    squeeze_excite: bool = False
    h_swish: bool = False
    dense: PosInt

    @field_validator("downsampling_layers")
    @classmethod
    def _downsampling(cls, v, info):
        n = info.data.get("num_layers", 0)
        bad = [b for b in v if not 4 <= b <= n]
        if bad:
            raise ValueError(f"block {bad[0]} is not one of blocks 4..num_layers ({n}); the stem and blocks 1 "
                             f"and 3 always downsample")
        return v


class Xinet(Schema):
    """A XiNet backbone (xinet.py): width alpha, compression gamma, num_layers filter widths."""
    type: Literal["xinet"]
    alpha: PosFloat
    gamma: PosInt
    num_layers: Annotated[int, Field(ge=3, strict=True)]
    base_filters: PosInt = 16
    attention: bool = False
    activation: Literal["relu6", "silu"] = "relu6"
    dense: PosInt


BRANCH_TYPES = ("dscnn", "phinet", "xinet")


def _branch_type(value) -> str:
    """The branch's `type` (dscnn when absent), for the tagged union."""
    return value.get("type", "dscnn") if isinstance(value, dict) else getattr(value, "type", "dscnn")


Branch = Annotated[Union[Annotated[Dscnn, Tag("dscnn")], Annotated[Phinet, Tag("phinet")],
                         Annotated[Xinet, Tag("xinet")]],
                   Discriminator(_branch_type, custom_error_type="branch_type",
                                 custom_error_message=f"type must be one of {', '.join(BRANCH_TYPES)}")]


class Train(Schema):
    epochs: PosInt
    patience: PosInt
    batch_size: PosInt
    lr: PosFloat
    dropout: Fraction
    class_weight: Literal["auto", "balanced", "none"]
    early_stopping: Literal["uar", "loss", "accuracy"]
    branches: dict[Name, Branch] = Field(min_length=1)
    head: list[PosInt]


# ----------------------------------------------------------------------------- later stages

class Evaluate(Schema):
    batch_size: PosInt
    confidence: Annotated[float, Field(gt=0.5, lt=1)]
    chance_margin: Annotated[float, Field(ge=0, lt=0.5)]
    bootstrap: Annotated[int, Field(ge=100, strict=True)]


class Sensitivity(Schema):
    batch_size: PosInt
    batches: PosInt
    tol: PosFloat
    min_iter: Annotated[int, Field(ge=2, strict=True)]
    max_iter: PosInt

    @model_validator(mode="after")
    def _iters(self):
        if self.max_iter < self.min_iter:
            raise ValueError(f"max_iter {self.max_iter} is below min_iter {self.min_iter}")
        return self


Bits = Annotated[int, Field(ge=2, le=8, strict=True)]
Width = Union[Bits, Literal[32]]   # 32: the layer stays float (FP32)
Backend = Literal["litert", "onnx"]


class Latency(Schema):
    backend: Backend
    threads: PosInt
    rounds: PosInt
    calls: PosInt


class Ilp(Schema):
    bit_choices: list[Width] = Field(min_length=1)
    size_lambda: Annotated[float, Field(ge=0, le=1)] | None
    size_limit: NonNegFloat | None
    bops_lambda: Annotated[float, Field(ge=0, le=1)] | None
    bops_limit: NonNegFloat | None
    latency_lambda: Annotated[float, Field(ge=0, le=1)] | None
    latency_limit: PosFloat | None     # microseconds
    tie_depthwise: bool
    pin_bits: Width | None

    @model_validator(mode="after")
    def _choices(self):
        if len(set(self.bit_choices)) != len(self.bit_choices):
            raise ValueError(f"bit_choices must be distinct (got {self.bit_choices})")
        if not [b for b in self.bit_choices if b != 32]:
            raise ValueError("bit_choices need at least one quantized width (2..8) beside 32 (float)")
        for kind in ("size", "bops", "latency"):
            if getattr(self, f"{kind}_lambda") is not None and getattr(self, f"{kind}_limit") is not None:
                raise ValueError(f"give {kind}_lambda or {kind}_limit, not both")
        if self.pin_bits is not None and self.pin_bits not in self.bit_choices:
            raise ValueError(f"pin_bits {self.pin_bits} is not one of bit_choices {self.bit_choices}")
        return self


class Qat(Schema):
    epochs: NonNegInt
    lr: PosFloat


class Ablation(Schema):
    random: NonNegInt   # random allocations at the MP variant's size budget


class Quantize(Schema):
    batch_size: PosInt
    calibration_batches: PosInt
    qat: Qat
    sweep: list[Annotated[float, Field(ge=0, le=1)]]
    ablation: Ablation


class Tm2Limits(Schema):
    max_file_bytes: PosInt
    max_header_bytes: PosInt
    max_header_json_bytes: PosInt
    max_header_depth: Annotated[int, Field(ge=4, le=1000, strict=True)]


class Export(Schema):
    variants: list[Name] | None
    min_agreement: Annotated[float, Field(ge=0, le=1)]
    backends: list[Backend] = Field(min_length=1)
    tm2_limits: Tm2Limits


class Power(Schema):
    idle_seconds: PosFloat
    seconds: PosFloat
    interval_seconds: PosFloat


class Pi(Schema):
    work_pool: Name
    deployment: Name
    api_url: str | None
    tracking_uri: str | None
    timeout_seconds: PosFloat
    poll_seconds: PosFloat


class Benchmark(Schema):
    runner: Literal["local", "pi"]
    backend: Backend
    threads: PosInt | None
    compare_rounds: PosInt
    compare_calls: PosInt
    warmup: NonNegInt
    runs: PosInt
    throughput_batch: PosInt
    throughput_runs: PosInt
    power_command: str | None
    power: Power
    pi: Pi


# ----------------------------------------------------------------------------- devices and scaling

class Profile(Schema):
    """A device's budget for one model: its `.tm2` file in Flash, its peak activation memory in RAM, its work."""
    description: str = ""
    flash_bytes: PosInt
    ram_bytes: PosInt
    macs: PosInt | None = None           # multiply-accumulates per inference
    bops: PosInt | None = None           # bit operations per inference (MACs x bits^2)
    activation_storage: Literal["packed", "int8"] = "packed"   # b-bit activations packed, or one byte each (LiteRT)


class Family(Schema):
    """A backbone family's search space for `scale`: fixed branch values and per-hyperparameter candidates.
    `dscnn` scales the paper branch of `train` by `width` (its filters x width, at least 1)."""
    fixed: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}

    @model_validator(mode="after")
    def _grid(self):
        empty = [k for k, v in self.grid.items() if not v]
        if empty:
            raise ValueError(f"grid.{empty[0]}: give at least one candidate")
        if "dense" in self.grid or "type" in self.grid:
            raise ValueError("the grid cannot vary `dense` or `type` (the head's input and the family are fixed)")
        return self


class Scale(Schema):
    profile: Name | None                 # a key of `profiles`; null: train's architectures as given
    family: Literal["dscnn", "phinet", "xinet"]
    capacity: Literal["params", "macs"]  # the capacity proxy the MILP maximises
    perturbation_weight: NonNegFloat     # weight of the data-free bit-perturbation term against capacity
    cases: dict[Name, dict[Literal["dscnn", "phinet", "xinet"], Family]]


# ----------------------------------------------------------------------------- the file

class Params(Schema):
    seed: Seeds
    partitions: list[NonNegInt] = Field(min_length=1)
    limits: Limits
    cases: dict[Name, Case] = Field(min_length=1)
    fetch: dict[Name, Fetch]
    slice: dict[Name, Slice]
    featurize: dict[Name, Featurize]
    train: dict[Name, Train]
    evaluate: Evaluate
    sensitivity: Sensitivity
    latency: Latency
    ilp: Ilp
    quantize: Quantize
    export: Export
    benchmark: Benchmark
    profiles: dict[Name, Profile] = Field(min_length=1)
    scale: Scale

    @field_validator("partitions")
    @classmethod
    def _partitions(cls, v):
        if v != list(range(len(v))):
            raise ValueError("must be 0, 1, ..., P-1")
        return v

    @model_validator(mode="after")
    def _per_case(self):
        for section in ("fetch", "slice", "featurize", "train"):
            entries = getattr(self, section)
            for case in self.cases:
                if case not in entries:
                    raise _Nested((section, case), "missing (every case of `cases` needs one)", None)
            for extra in set(entries) - set(self.cases):
                raise _Nested((section, extra), f"not a case (cases: {', '.join(self.cases)})", extra)
        for name, case in self.cases.items():
            self._check_case(name, case)
        if self.scale.profile is not None and self.scale.profile not in self.profiles:
            raise _Nested(("scale", "profile"), f"not a profile (profiles: {', '.join(self.profiles)})",
                          self.scale.profile)
        for extra in set(self.scale.cases) - set(self.cases):
            raise _Nested(("scale", "cases", extra), f"not a case (cases: {', '.join(self.cases)})", extra)
        return self

    def profile(self) -> Profile | None:
        """The device profile `scale.profile` names, or None."""
        return self.profiles[self.scale.profile] if self.scale.profile else None

    def _check_case(self, name: str, case: Case) -> None:
        shape = "video" if case.video else ("image" if "image" in case.modalities.values() else "audio")
        fetch = self.fetch[name]
        if shape not in SOURCE_KINDS[fetch.source]:
            ok = sorted(s for s, kinds in SOURCE_KINDS.items() if shape in kinds)
            raise _Nested(("fetch", name, "source"), f"source {fetch.source!r} cannot give {shape} modalities "
                          f"(choose from {', '.join(ok)})", fetch.source)
        if isinstance(fetch.demo, dict):
            fetch.demo = _sub(DemoVideo if case.video else DemoAudio, fetch.demo, "fetch", name, "demo")
        cut = self.slice[name]
        kinds = set(case.modalities.values())
        if "audio" in kinds and (cut.chunk_seconds is None or cut.min_seconds is None):
            raise _Nested(("slice", name, "chunk_seconds"), "required for audio modalities (with min_seconds)", None)
        if kinds & {"image", "video_frame"} and cut.frame_size is None:
            raise _Nested(("slice", name, "frame_size"), "required for image and video_frame modalities", None)
        if cut.split.strategy == "time_blocks" and not case.video:
            raise _Nested(("slice", name, "split", "strategy"), "time_blocks splits videos; use subject or random",
                          "time_blocks")
        specs = self.featurize[name].model_extra
        for modality, kind in case.modalities.items():
            spec = specs.get(modality)
            want = "mfcc" if kind in AUDIO_KINDS else "image"
            if spec is None:
                raise _Nested(("featurize", name, modality), f"missing (modality {modality} needs a {want} spec)", None)
            if isinstance(spec, dict):
                if spec.get("type") != want:
                    raise _Nested(("featurize", name, modality, "type"), f"{kind} modalities are featurized as "
                                  f"type: {want}", spec.get("type"))
                specs[modality] = _sub(Mfcc if want == "mfcc" else Image, spec, "featurize", name, modality)
        for extra in set(specs) - set(case.modalities):
            raise _Nested(("featurize", name, extra), f"not a modality of case {name}", None)
        branches = self.train[name].branches
        for modality in case.modalities:
            if modality not in branches:
                raise _Nested(("train", name, "branches", modality), "missing (every modality needs a branch)", None)
        for extra in set(branches) - set(case.modalities):
            raise _Nested(("train", name, "branches", extra), f"not a modality of case {name}", None)

    def input_shape(self, case: str, modality: str) -> tuple[int, int, int]:
        """(C, H, W) that featurize gives a modality: MFCC (1, frames, n_mfcc) or image (3, size, size)."""
        spec, kind = self.featurize[case].spec(modality), self.cases[case].modalities[modality]
        if spec.type == "image":
            return (3, spec.size, spec.size)
        cut = self.slice[case]
        samples = round((cut.chunk_seconds if kind == "audio" else 1.0) * cut.sample_rate)
        frames = 1 + samples // spec.hop_length if spec.center else 1 + (samples - spec.n_fft) // spec.hop_length
        return (1, frames, spec.n_mfcc)


# ----------------------------------------------------------------------------- loading

def read(path: str | Path = PARAMS_FILE) -> dict:
    """params.yaml as a plain mapping; a missing or malformed file is a ParamsError naming it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return raw


def validate(raw: dict, source: str = PARAMS_FILE) -> Params:
    """The validated params; the first failure is one ParamsError line naming the key."""
    try:
        return Params.model_validate(copy.deepcopy(raw))
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc, msg, value = first["loc"], first["msg"], first.get("input")
        ctx = (first.get("ctx") or {}).get("error")
        if isinstance(ctx, _Nested):
            loc, msg, value = tuple(loc) + ctx.loc, str(ctx), ctx.value
        msg = msg.removeprefix("Value error, ")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        got = "" if value is None or isinstance(value, dict) else f" (got {_short(value)})"
        raise ParamsError(f"{source}: {_key(loc) or 'top level'}: {msg}{got}{more}") from None


def load(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    return validate(read(path), str(path))


def _key(loc) -> str:
    """Dotted key from a pydantic location, skipping union/tagged-union branch names."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        elif part in ("DemoAudio", "DemoVideo", "mfcc", "image", "Coswara", "Manifest", "Folder", "Youtube", *BRANCH_TYPES) \
                or part.startswith(("tuple[", "function-", "constrained-", "literal[", "list[", "dict[")):
            continue
        else:
            parts.append(str(part))
    return ".".join(parts)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base` (how tests shrink the configuration)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out

