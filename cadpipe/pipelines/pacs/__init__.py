"""Scoring where the studies live: PACS input sources and result senders, above :mod:`cadpipe.pipelines.scoring`.

- :mod:`.dicomweb`: DICOMweb (QIDO-RS search, WADO-RS retrieval into a cache folder, STOW-RS of results), every
  request bounded in time and size (:mod:`.bounded_http`, WADO-RS answers split to disk by :mod:`.multipart`);
  credentials from an environment variable or a file (:func:`.dicomweb.read_auth`, :mod:`.secret_file`).
- :mod:`.score_cli`: ``cadpipe score`` = the folder scoring CLI plus ``--dicomweb`` / ``--store-results``.
- :mod:`.listener`: a DIMSE C-STORE SCP (``pynetdicom``) that scores each study once it is complete, and its
  ``cadpipe listen`` CLI.
- :mod:`.send`: C-STORE SCU sending result files to a peer.
- :mod:`.results_files`: which DICOM result files a scored output folder holds per study.

May import :mod:`cadpipe.pipelines.scoring` and everything below it (outputs, inference, tasks, data,
transforms); nothing below imports this package.
"""
