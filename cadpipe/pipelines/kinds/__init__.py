"""Task kinds: what differs between classification, multi-label, segmentation and detection bundles, one module
each (:mod:`~cadpipe.pipelines.kinds.base` has the interface, :mod:`~cadpipe.pipelines.kinds.registry` maps a
bundle's declared ``cadpipe.task`` to its kind)."""

from cadpipe.pipelines.kinds.base import TaskKind, UnitOutputs
from cadpipe.pipelines.kinds.registry import KINDS, kind_of

__all__ = ["KINDS", "TaskKind", "UnitOutputs", "kind_of"]
