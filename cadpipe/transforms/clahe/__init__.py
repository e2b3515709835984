"""Contrast-limited adaptive histogram equalisation (CLAHE).

``clahe_image`` (per-image CPU reference, no MONAI import), ``clahe_vectorised`` (torch, many tiles at once),
``clahe_triton`` (Triton kernels), ``clahe_batched`` (the batched entry point choosing among them) and
``transforms`` (the MONAI ``CLAHE``/``CLAHEd`` pair). Public names resolve as ``cadpipe.transforms.<Name>``.
"""
