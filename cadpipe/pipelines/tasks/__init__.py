"""What bundle configs name in ``_target_`` and ``$`` expressions: per-task datalists, metrics, handlers, training and
evaluation pieces (classification, multilabel ChestX-ray14, segmentation, detection, histology, lung, distributed).

May import ``outputs`` and ``inference`` (heatmaps); never ``scoring``, ``portal`` or ``monailabel``.
"""
