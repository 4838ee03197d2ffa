"""ModelSpec: everything a deployed model needs to be used correctly.

It travels with every artifact (checkpoint ``spec`` key, ONNX metadata under ``artifact.SPEC_KEY``,
TensorRT sidecar JSON), so train and deploy never disagree about preprocessing or labels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tl.runtime.errors import TLError

FORMAT = 1
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
            resize_size = image_size if resize_mode == "squash" else int(round(image_size / 0.875))
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
        problems = []
        if self.format != FORMAT:
            problems.append(f"format {self.format} is not supported (this tl reads format {FORMAT})")
        if not self.classes:
            problems.append("classes is empty")
        if len(set(self.classes)) != len(self.classes):
            problems.append("classes has duplicates")
        if self.num_classes != len(self.classes):
            problems.append(f"num_classes={self.num_classes} but {len(self.classes)} class names")
        if self.input.layout != "NCHW":
            problems.append(f"input layout {self.input.layout!r} is not NCHW")
        if self.input.channels != 3:
            problems.append(f"input channels {self.input.channels} (only RGB is supported)")
        if self.input.height < 8 or self.input.width < 8:
            problems.append(f"input size {self.input.height}x{self.input.width} is too small")
        p = self.preprocess
        if p.resize_mode not in RESIZE_MODES:
            problems.append(f"resize_mode {p.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if p.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {p.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if p.resize_mode == "shorter" and p.resize_size < max(self.input.height, self.input.width):
            problems.append(f"resize_size {p.resize_size} is smaller than the crop {self.input.height}x{self.input.width}")
        if len(p.mean) != 3 or len(p.std) != 3 or any(s <= 0 for s in p.std):
            problems.append("mean/std must be 3 values each, std > 0")
        if problems:
            raise TLError("invalid model spec: " + "; ".join(problems))

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
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        try:
            pre = dict(d.get("preprocess", {}))
            for k in ("mean", "std"):
                if k in pre:
                    pre[k] = tuple(float(x) for x in pre[k])
            return cls(
                arch=str(d["arch"]),
                classes=tuple(d["classes"]),
                num_classes=int(d.get("num_classes", len(d["classes"]))),
                input=InputSpec(**d.get("input", {})),
                preprocess=PreprocessSpec(**pre),
                output=OutputSpec(**d.get("output", {})),
                format=int(d.get("format", FORMAT)),
            )
        except TLError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise TLError(f"invalid model spec: {type(e).__name__}: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TLError(f"invalid model spec: not JSON ({e})") from e
        if not isinstance(data, dict):
            raise TLError("invalid model spec: expected a JSON object")
        # A sidecar holds {"spec": {...}, "build": {...}}; accept it too.
        if "spec" in data and "arch" not in data:
            data = data["spec"]
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        from tl.runtime.files import atomic_write_text

        atomic_write_text(path, self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        path = Path(path)
        if not path.is_file():
            raise TLError(f"spec file not found: {path}")
        return cls.from_json(path.read_text())
