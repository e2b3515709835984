"""Synthetic DDSM-style ``.LJPEG`` files and case folders (``.ics``), with the pixel ground truth.

Nothing here is DDSM data: case folders are named ``synthetic_ljpeg/caseNNNN`` and each ``.ics`` carries a
``# synthetic`` comment line (read back by :func:`cadpipe.transforms.readers.io_ljpeg.read_ics` into ``comments``, and
by the reader into ``meta["synthetic"]``). File names follow DDSM (``A_0001_1.LEFT_CC.LJPEG``, ``A-0001-1.ics``) so
the reader's name parsing is exercised.

Variants a test can ask for per view:

* ``header="transposed_raster"`` — the raster encoded with a ``(cols, rows)`` frame (DDSM's transposed headers: the
  raster is right, its shape is not).
* ``header="swapped_header"`` — encoded ``(rows, cols)``, then height/width swapped in the SOF3 header bytes.
* ``ssss16_extra_bits=True`` — written by cadpipe's encoder with header precision 16 (as DDSM's files say) and 16
  additional bits after each SSSS=16 difference (the non-standard old-encoder variant). With precision 16 the first
  pixel is predicted from 32768, so a first pixel of 0 (the synthetic images' background corner) has SSSS=16.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cadpipe.transforms.readers._ljpeg_codec import encode_ljpeg_python, swap_header_dims

__all__ = ["DIGITIZERS", "RESOLUTIONS_UM", "synthetic_ljpeg_image", "encode_ljpeg", "write_ljpeg", "write_ljpeg_case"]

#: a digitizer consistent with each case prefix (A = MGH: DBA or HOWTEK; B, C = WFU: LUMISYS; D = ISMD: HOWTEK)
DIGITIZERS = {"A": "HOWTEK MultiRad850", "B": "LUMISYS LASER", "C": "LUMISYS LASER", "D": "HOWTEK MultiRad850"}
#: scan resolution in microns per digitizer (DDSM volumes: DBA 42, HOWTEK 43.5, LUMISYS 50)
RESOLUTIONS_UM = {"DBA": 42.0, "HOWTEK": 43.5, "LUMISYS": 50.0}

_VIEWS = ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO")


def synthetic_ljpeg_image(rows: int, cols: int, bits: int = 12, seed: int = 0, laterality: str = "LEFT") -> np.ndarray:
    """A ``(rows, cols)`` uint16 image using the full ``bits`` range: dark background (0 in the corners), a bright
    half-ellipse breast on the chest-wall side, texture and noise. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float64)
    wall = cols - 1 if laterality.upper().startswith("L") else 0
    ell = (np.abs(cc - wall) / (0.85 * cols)) ** 2 + ((rr - rows / 2) / (0.48 * rows)) ** 2
    img = rng.uniform(0, 0.03 * top, size=(rows, cols))
    breast = ell < 1
    texture = 0.08 * np.sin(rr / 3.7) * np.cos(cc / 5.3)
    img[breast] = (0.45 + 0.4 * (1 - ell[breast]) + texture[breast]) * top + rng.normal(0, 0.01 * top, breast.sum())
    img[0, 0] = 0
    img[-1, -1] = top
    return np.clip(np.rint(img), 0, top).astype(np.uint16)


def encode_ljpeg(
    image: np.ndarray, bits: int = 12, header: str = "standard", ssss16_extra_bits: bool = False
) -> bytes:
    """Encode a ``(rows, cols)`` image as DDSM-like lossless JPEG bytes (see the module docstring for ``header``).

    ``ssss16_extra_bits=False`` uses ``imagecodecs.ljpeg_encode``; ``True`` uses cadpipe's predictor-1 encoder
    with header precision 16 and the non-standard extra bits.
    """
    if header not in ("standard", "transposed_raster", "swapped_header"):
        raise ValueError(f"header must be standard, transposed_raster or swapped_header, not {header!r}")
    img = np.ascontiguousarray(image, dtype=np.uint16)
    rows, cols = img.shape
    raster = img.reshape(cols, rows) if header == "transposed_raster" else img
    if ssss16_extra_bits:
        data = encode_ljpeg_python(raster, precision=16, ssss16_extra_bits=True)
    else:
        import imagecodecs

        data = imagecodecs.ljpeg_encode(raster, bitspersample=bits)
    return swap_header_dims(data) if header == "swapped_header" else data


def write_ljpeg(path: str | os.PathLike, image: np.ndarray, bits: int = 12, header: str = "standard",
                ssss16_extra_bits: bool = False) -> str:
    """Write :func:`encode_ljpeg`'s bytes to ``path``; returns the path."""
    Path(path).write_bytes(encode_ljpeg(image, bits, header, ssss16_extra_bits))
    return os.fspath(path)


def write_ljpeg_case(
    root: str | os.PathLike,
    case_number: int = 1,
    prefix: str = "A",
    rows: int = 96,
    cols: int = 64,
    bits: int = 12,
    views: tuple[str, ...] = _VIEWS,
    digitizer: str | None = None,
    resolution_um: float | None = None,
    transposed_views: tuple[str, ...] = (),
    swapped_header_views: tuple[str, ...] = (),
    ssss16_views: tuple[str, ...] = (),
    overlay_views: tuple[str, ...] = (),
    patient_age: int = 55,
    density: int = 2,
    seed: int = 0,
) -> dict:
    """Write ``<root>/synthetic_ljpeg/caseNNNN/`` with one ``.LJPEG`` per view and the case ``.ics``.

    Views get slightly different sizes (``rows + 4*(k % 2)``, ``cols - 2*(k // 2)``) so a mix-up shows.
    ``overlay_views`` only sets ``OVERLAY`` on the ``.ics`` line (no ``.OVERLAY`` file is written here).

    Returns:
        ``{"case_dir", "ics", "case", "digitizer", "resolution_um", "views": {view: {"path", "pixels" (rows, cols)
        uint16, "rows", "cols", "header", "ssss16_extra_bits"}}}``.
    """
    prefix = prefix.upper()
    digitizer = digitizer or DIGITIZERS.get(prefix, "LUMISYS LASER")
    if resolution_um is None:
        resolution_um = RESOLUTIONS_UM.get(digitizer.split()[0].upper(), 50.0)
    case = f"{prefix}_{case_number:04d}_1"
    case_dir = Path(root) / "synthetic_ljpeg" / f"case{case_number:04d}"
    case_dir.mkdir(parents=True, exist_ok=True)
    res_text = f"{resolution_um:g}"
    ics = [
        "ics_version 1.0",
        f"filename {prefix}-{case_number:04d}-1",
        "# synthetic: written by cadpipe.data.synthetic.ljpeg, not DDSM data",
        "DATE_OF_STUDY 2 7 1995",
        f"PATIENT_AGE {patient_age}",
        "FILM",
        "FILM_TYPE REGULAR",
        f"DENSITY {density}",
        "DATE_DIGITIZED 7 22 1997",
        f"DIGITIZER {digitizer}",
        "SELECTED",
    ]
    truth = {}
    for k, view in enumerate(_VIEWS):
        if view not in views:
            continue
        vr, vc = rows + 4 * (k % 2), cols - 2 * (k // 2)
        img = synthetic_ljpeg_image(vr, vc, bits, seed=seed * 10 + k, laterality=view.split("_")[0])
        header = "transposed_raster" if view in transposed_views else (
            "swapped_header" if view in swapped_header_views else "standard")
        path = case_dir / f"{case}.{view}.LJPEG"
        write_ljpeg(path, img, bits, header, view in ssss16_views)
        ics.append(
            f"{view} LINES {vr} PIXELS_PER_LINE {vc} BITS_PER_PIXEL {bits} RESOLUTION {res_text} "
            + ("OVERLAY" if view in overlay_views else "NON_OVERLAY")
        )
        truth[view] = {"path": str(path), "pixels": img, "rows": vr, "cols": vc, "header": header,
                       "ssss16_extra_bits": view in ssss16_views}
    ics_path = case_dir / f"{prefix}-{case_number:04d}-1.ics"
    ics_path.write_text("\n".join(ics) + "\n")
    return {"case_dir": str(case_dir), "ics": str(ics_path), "case": case, "digitizer": digitizer,
            "resolution_um": resolution_um, "views": truth}
