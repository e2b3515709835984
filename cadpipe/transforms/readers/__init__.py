"""Readers and the guards in front of them.

One module per format (``io_dicom``, ``io_ljpeg`` with its ``_ljpeg_codec``, ``io_imagescope``, ``io_raw``) plus
``io_any`` (format detection and the one loader the bundles use), and what every reader checks before decoding:
``dicom_probe`` (bounded header probe), ``file_checks`` (path and link checks), ``limits`` (pixel/voxel guards).
Public names resolve as ``cadpipe.transforms.<Name>``.
"""
