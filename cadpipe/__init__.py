"""cadpipe: MONAI-based computer-aided-diagnosis pipelines."""

from cadpipe.flags import as_bool  # bundle configs write `$cadpipe.as_bool(@id)` for boolean ids

__version__ = "0.1.0"
