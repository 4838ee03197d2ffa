"""tl.runtime: load any tl artifact and classify images, with no torch installed."""

from tl.runtime.lazy import lazy_exports

from tl.runtime.errors import TLError
from tl.runtime.spec import ModelSpec

__all__ = ["TLError", "ModelSpec", "Classifier", "Prediction", "PredictOptions", "predict_files",
           "FrameResult", "FrameStream", "StreamOptions", "open_source", "RayOptions", "classify_on_ray"]

# Lazy: importing tl.runtime must not import numpy, onnxruntime, tensorrt or ray.
_HOMES = {"Classifier": "tl.runtime.classifier", "Prediction": "tl.runtime.classifier",
          "PredictOptions": "tl.runtime.predict", "predict_files": "tl.runtime.predict",
          "FrameResult": "tl.runtime.stream", "FrameStream": "tl.runtime.stream", "StreamOptions": "tl.runtime.stream",
          "open_source": "tl.runtime.video", "RayOptions": "tl.runtime.raydata", "classify_on_ray": "tl.runtime.raydata"}

__getattr__ = lazy_exports(__name__, _HOMES)
