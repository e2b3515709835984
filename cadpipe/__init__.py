"""cadpipe: MONAI-based computer-aided-diagnosis pipelines."""

__version__ = "0.1.0"
