"""Running a trained bundle: :class:`~cadpipe.pipelines.inference.bundle_runner.BundleRunner` (the one place a bundle's
inference pipeline is built from its config) and the heatmaps (Grad-CAM / CAM) drawn from its network.

May import ``outputs``; never ``tasks``, ``scoring`` or anything above.
"""
