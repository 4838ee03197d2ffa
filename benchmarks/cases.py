"""What the standalone measurements (``video_fps``, ``ray_overhead``) share: their model cases, the
untrained models they export, the machine they record and how they write their reports.

A case is ``arch:image_size:count`` (frames for video, images for Ray); the weights are untrained, which
changes nothing in speed, so the measurements need no training run.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CLASSES = ("circle", "square", "triangle", "cross")


@dataclass(frozen=True)
class ModelCase:
    arch: str
    image_size: int
    frames: int  # frames of a video, or images of a folder


def parse_models(text: str) -> list[ModelCase]:
    """arch:image_size:count,..."""
    return [ModelCase(a, int(s), int(n)) for a, s, n in (item.split(":") for item in text.split(","))]


def export_model(case: ModelCase, folder: Path) -> Path:
    """An untrained ``case.arch`` at ``case.image_size``, exported to FP32 ONNX with tl's spec."""
    import torch

    from tl.export.onnx import export_onnx
    from tl.runtime.spec import ModelSpec
    from tl.train.models import build_model

    torch.manual_seed(0)
    model = build_model(case.arch, len(CLASSES), weights="none").eval()
    spec = ModelSpec.create(arch=case.arch, classes=list(CLASSES), image_size=case.image_size)
    return export_onnx(model, spec, folder / f"{case.arch}_{case.image_size}.onnx")


def machine(**versions: str) -> dict:
    """The CPU, its usable cores, onnxruntime's version and the caller's own packages' ``versions``."""
    import onnxruntime

    from tl.runtime.env import environment

    cpu = environment()["cpu"]
    return {"cpu": cpu["model"], "cores": cpu["usable_cores"], "onnxruntime": onnxruntime.__version__, **versions}


def command_line(module: str, argv: list[str] | None) -> str:
    """How to run the measurement again, as the report says."""
    return shlex.join(["python", "-m", module, *(argv if argv is not None else sys.argv[1:])])


def write_report(out: Path, name: str, result: dict, report_md: Callable[[dict], str]) -> None:
    """OUT/NAME.json and OUT/NAME.md, and the markdown on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(report_md(result))
    print(report_md(result))
