"""tl: from a folder of labelled images to a fast, verified classifier."""

__version__ = "0.1.0"
