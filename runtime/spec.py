"""ModelSpec: everything a deployed model needs to be used correctly.

It travels with every artifact (checkpoint ``spec`` key, ONNX metadata under ``artifact.SPEC_KEY``,
TensorRT sidecar JSON), so train and deploy never disagree about preprocessing or labels.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tl.runtime.errors import TLError
from tl.runtime.files import special_kind

FORMAT = 1
# Far above any real input (torchvision's models are trained at 224-600 px) and far below
# what exhausts memory: one 100000 px image is 30 GB of RGB, killed by the OOM killer silently.
# Training's --image-size and every spec tl reads share this bound.
MAX_IMAGE_SIZE = 4096
MIN_INPUT_SIZE = 8  # below it no torchvision classifier's pooling has a pixel left
# torchvision's 256 -> 224: `shorter` resizes to image_size / CROP_FRACTION, then center crops,
# so a spec at the largest size resizes to MAX_RESIZE_SIZE.
CROP_FRACTION = 0.875
MAX_RESIZE_SIZE = int(round(MAX_IMAGE_SIZE / CROP_FRACTION))
FLOAT32_MAX = 3.4028234663852886e38  # normalized pixels above it are inf in the model's input
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "shorter")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class InputSpec:
    name: str = "input"
    layout: str = "NCHW"
    dtype: str = "float32"
    channels: int = 3
    height: int = 224
    width: int = 224


@dataclass(frozen=True)
class PreprocessSpec:
    # squash: resize to H x W ignoring aspect (the seed); shorter: shorter side to
    # resize_size, then center crop H x W (torchvision / timm eval).
    resize_mode: str = "squash"
    resize_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class OutputSpec:
    name: str = "logits"
    kind: str = "logits"


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    classes: tuple[str, ...]
    num_classes: int = -1
    input: InputSpec = field(default_factory=InputSpec)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    format: int = FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.num_classes == -1:
            object.__setattr__(self, "num_classes", len(self.classes))
        self.validate()

    # -- construction ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        *,
        arch: str,
        classes: list[str] | tuple[str, ...],
        image_size: int = 224,
        resize_mode: str = "squash",
        resize_size: int | None = None,
        interpolation: str = "bilinear",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> "ModelSpec":
        """The one place defaults are resolved (like timm's resolve_data_config)."""
        if resize_size is None:
            # torchvision's 256 -> 224 ratio for `shorter`; squash resizes straight to H x W.
            resize_size = image_size if resize_mode == "squash" else int(round(image_size / CROP_FRACTION))
        return cls(
            arch=arch,
            classes=tuple(classes),
            input=InputSpec(height=image_size, width=image_size),
            preprocess=PreprocessSpec(
                resize_mode=resize_mode,
                resize_size=int(resize_size),
                interpolation=interpolation,
                mean=tuple(float(m) for m in mean),
                std=tuple(float(s) for s in std),
            ),
        )

    def with_(self, **changes: Any) -> "ModelSpec":
        return replace(self, **changes)

    # -- checks ---------------------------------------------------------------------
    def validate(self) -> None:
        """Every field checked, so a spec from anywhere (a file, a model's metadata) cannot make
        preprocessing invent numbers: a NaN or zero std, a huge size, a label list of the wrong length."""
        check_format(self.format)
        problems = _label_problems(self) + _input_problems(self.input) + _preprocess_problems(self)
        if not isinstance(self.output.name, str) or self.output.kind != "logits":
            problems.append(f"output kind {self.output.kind!r} is not logits")
        if problems:
            raise TLError("invalid model spec: " + "; ".join(problems))

    def differences(self, other: "ModelSpec") -> list[str]:
        """What changes from this spec to ``other``, one short phrase per differing field."""
        mine, theirs = _flat(self.to_dict()), _flat(other.to_dict())
        return [f"{key} {_brief(mine.get(key))} -> {_brief(theirs.get(key))}"
                for key in dict.fromkeys([*mine, *theirs]) if mine.get(key) != theirs.get(key)]

    # -- (de)serialization ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["preprocess"]["mean"] = list(self.preprocess.mean)
        d["preprocess"]["std"] = list(self.preprocess.std)
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | Path | None = None) -> "ModelSpec":
        """The one way a stored spec becomes a ModelSpec (checkpoint, ONNX metadata, sidecar, spec.json).

        ``source`` names where it came from in messages. The format is checked first: a newer tl
        may have added fields this one would misread.
        """
        where = f"{source}: " if source is not None else ""
        if not isinstance(d, dict):
            raise TLError(f"{where}invalid model spec: expected a JSON object, got {type(d).__name__}")
        try:
            check_format(d.get("format", FORMAT))
            if not isinstance(d.get("classes"), (list, tuple)):
                raise TLError(f"invalid model spec: classes must be a list of names (got {type(d.get('classes')).__name__})")
            pre = dict(d.get("preprocess", {}))
            for k in ("mean", "std"):
                if k in pre:
                    pre[k] = tuple(float(x) for x in pre[k])
            return cls(
                arch=str(d["arch"]),
                classes=tuple(d["classes"]),
                num_classes=d.get("num_classes", len(d["classes"])),
                input=InputSpec(**d.get("input", {})),
                preprocess=PreprocessSpec(**pre),
                output=OutputSpec(**d.get("output", {})),
                format=d.get("format", FORMAT),
            )
        except TLError as e:
            raise TLError(f"{where}{e}") from e
        except (KeyError, TypeError, ValueError) as e:
            raise TLError(f"{where}invalid model spec: {type(e).__name__}: {e}") from e

    @classmethod
    def from_json(cls, text: str, *, source: str | Path | None = None) -> "ModelSpec":
        where = f"{source}: " if source is not None else ""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TLError(f"{where}invalid model spec: not JSON ({e})") from e
        if not isinstance(data, dict):
            raise TLError(f"{where}invalid model spec: expected a JSON object")
        # A sidecar holds {"spec": {...}, "build": {...}}; accept it too.
        if "spec" in data and "arch" not in data:
            data = data["spec"]
        return cls.from_dict(data, source=source)

    def save(self, path: str | Path) -> None:
        from tl.runtime.files import atomic_write_text

        atomic_write_text(path, self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        path = Path(path)
        require_regular_file(path, "spec file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TLError(f"{path}: cannot read the spec file ({getattr(e, 'strerror', None) or e})") from e
        return cls.from_json(text, source=path)


def check_format(fmt: Any) -> None:
    """A spec's ``format`` must be one this tl reads; a newer one asks for a newer tl."""
    if not _is_int(fmt) or fmt < 1:
        raise TLError(f"invalid model spec: format {fmt!r} is not a format version (this tl reads format {FORMAT})")
    if fmt > FORMAT:
        raise TLError(newer_format("model spec", fmt, FORMAT, "model"))


def newer_format(what: str, fmt: int, newest: int, use: str) -> str:
    """The message for a file written by a newer tl: its fields may mean what this tl would misread."""
    return (f"{what} format {fmt} is newer than this tl reads (format {newest}); "
            f"upgrade tl (pip install -U tl) to use this {use}")


def require_regular_file(path: Path, what: str) -> None:
    """``path`` is a regular file, or one line saying what it is instead (never opened: a FIFO would block)."""
    import stat

    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise TLError(f"{what} not found: {path}") from None
    except OSError as e:
        raise TLError(f"{what} {path}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise TLError(f"{path} is a folder; pass a {what}")
    if not stat.S_ISREG(mode):
        raise TLError(f"{path} is {special_kind(mode)}, not a file; pass the {what} as a regular file")


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _label_problems(spec: ModelSpec) -> list[str]:
    problems = []
    if not isinstance(spec.arch, str) or not spec.arch:
        problems.append("arch is empty")
    if not spec.classes:
        problems.append("classes is empty")
    if len(set(spec.classes)) != len(spec.classes):
        problems.append("classes has duplicates")
    if not _is_int(spec.num_classes) or spec.num_classes != len(spec.classes):
        problems.append(f"num_classes={spec.num_classes} but {len(spec.classes)} class names")
    return problems


def _input_problems(i: InputSpec) -> list[str]:
    problems = []
    if not isinstance(i.name, str) or not i.name:
        problems.append(f"input name {i.name!r} is not a name")
    if i.layout != "NCHW":
        problems.append(f"input layout {i.layout!r} is not NCHW")
    if i.channels != 3 or not _is_int(i.channels):
        problems.append(f"input channels {i.channels} (only RGB is supported)")
    if not (_is_int(i.height) and _is_int(i.width)):
        problems.append(f"input size {i.height!r}x{i.width!r} is not whole pixels")
    elif min(i.height, i.width) < MIN_INPUT_SIZE:
        problems.append(f"input size {i.height}x{i.width} is too small (at least {MIN_INPUT_SIZE} px)")
    elif max(i.height, i.width) > MAX_IMAGE_SIZE:
        problems.append(f"input size {i.height}x{i.width} is too large (at most {MAX_IMAGE_SIZE} px)")
    return problems


def _preprocess_problems(spec: ModelSpec) -> list[str]:
    p, problems = spec.preprocess, []
    if p.resize_mode not in RESIZE_MODES:
        problems.append(f"resize_mode {p.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if p.interpolation not in INTERPOLATIONS:
        problems.append(f"interpolation {p.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    if not _is_int(p.resize_size) or not 1 <= p.resize_size <= MAX_RESIZE_SIZE:
        problems.append(f"resize_size {p.resize_size!r} is not between 1 and {MAX_RESIZE_SIZE} pixels")
    elif p.resize_mode == "shorter" and _is_int(spec.input.height) and _is_int(spec.input.width) \
            and p.resize_size < max(spec.input.height, spec.input.width):
        problems.append(f"resize_size {p.resize_size} is smaller than the crop {spec.input.height}x{spec.input.width}")
    if len(p.mean) != 3 or len(p.std) != 3:
        problems.append("mean/std must be 3 values each")
    elif not all(isinstance(x, numbers.Real) and math.isfinite(x) for x in (*p.mean, *p.std)):
        problems.append(f"mean {list(p.mean)} and std {list(p.std)} must be finite numbers")
    elif any(s <= 0 for s in p.std):
        problems.append(f"std {list(p.std)} must be > 0")
    elif any(max(abs(m), abs(1 - m)) / s > FLOAT32_MAX for m, s in zip(p.mean, p.std)):
        problems.append(f"std {list(p.std)} is so small that normalized pixels overflow float32")
    return problems


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _brief(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
