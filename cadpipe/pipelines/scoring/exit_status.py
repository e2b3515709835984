"""``cadpipe score``'s exit statuses, in a module that imports nothing heavy: the command's parser and ``--help``
read them without loading torch or MONAI."""

from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_USAGE", "EXIT_SOME_FAILED", "EXIT_NOTHING_FOUND", "EXIT_STATUS"]

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
EXIT_NOTHING_FOUND = 4  # the input holds no scoreable unit (nothing was scored; a warning says so)

EXIT_STATUS = """exit status:
  0  every unit scored ok (or already scored by an earlier run)
  2  usage error, nothing written: bad option, missing input/bundle/weights, unavailable device, missing extra,
     an output folder that holds another bundle's results (without --force)
  3  some units failed: each has an error row in results.csv (path + reason); the others are scored
  4  the input holds no scoreable unit (a warning on stderr says so)"""
