"""Batch scoring of study folders (``cadpipe score``): discovery of units, the crash-safe journal and results table,
DataLoader worker transport, the scoring core and its backends (local, Ray), the CLI.

May import ``outputs``, ``inference`` and ``tasks``; the Ray backend depends on the core, and the CLI picks it.
"""
