"""tl.runtime: load any tl artifact and classify images, with no torch installed."""

from tl.runtime.errors import TLError
from tl.runtime.spec import ModelSpec

__all__ = ["TLError", "ModelSpec", "Classifier", "Prediction"]


def __getattr__(name):  # lazy: importing tl.runtime must not import onnxruntime/tensorrt
    if name in ("Classifier", "Prediction"):
        from tl.runtime import classifier

        return getattr(classifier, name)
    raise AttributeError(name)
