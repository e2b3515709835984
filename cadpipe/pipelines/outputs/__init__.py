"""Files a scored unit leaves behind: atomic file writing, the study report (HTML/PDF), DICOM SEG (and other DICOM
result objects).

The lowest pipelines layer: imports only ``cadpipe.transforms``/``cadpipe.data`` and libraries.
"""
