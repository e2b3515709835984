"""Synthetic H&E-like "tissue" photos with a class-dependent lesion, in BACH and BreaKHis layouts (labelled
synthetic in file/folder names and in the returned ground truth).

Each image (``size = (width, height)``, default 256x192) has pink stroma with noise and nuclei, a blank white
band (background, for the tissue filter) along the right edge, and one elliptic lesion whose colour and
texture depend on the class. The ground truth gives the lesion box ``(x0, y0, x1, y1)`` in pixels
(x = column, y = row). With ``imagescope_xml=True`` the writers also put an Aperio ImageScope XML beside each image
(same stem, ``.xml``) whose one region is the lesion ellipse, named after the image's class.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from cadpipe.data.bach import BACH_CLASSES
from cadpipe.data.breakhis import SUBTYPE_CODES
from cadpipe.transforms.readers.io_imagescope import ellipse_region, write_imagescope_xml

__all__ = ["synthetic_tissue", "write_synthetic_bach", "write_synthetic_breakhis"]

# lesion colour (RGB in [0,1]) and texture per class index, for up to 4 classes
_LESION = [((0.80, 0.45, 0.70), "blobs"), ((0.55, 0.30, 0.70), "stripes"), ((0.40, 0.20, 0.60), "dots"),
           ((0.25, 0.10, 0.45), "solid")]


def synthetic_tissue(label: int, size=(256, 192), rng=None, n_classes: int = 4, blank_fraction: float = 0.2):
    """One synthetic RGB uint8 image ``(rows, cols, 3)`` and its lesion box ``(x0, y0, x1, y1)``.

    ``n_classes=2`` uses textures 0 and 3 (most different) for benign/malignant.
    """
    rng = np.random.default_rng(rng)
    w, h = int(size[0]), int(size[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[...] = (0.93, 0.72, 0.84)
    img += rng.normal(0, 0.03, (h, w, 1))
    kind = label if n_classes > 2 else (0 if label == 0 else 3)
    # scattered small nuclei everywhere in the tissue (same for every class: the lesion carries the class)
    for _ in range(int(w * h / 600)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.5, 3)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (0.60, 0.40, 0.75)
    tissue_w = int(round(w * (1 - blank_fraction)))
    colour, texture = _LESION[kind]
    rx, ry = w * rng.uniform(0.17, 0.22), h * rng.uniform(0.22, 0.3)
    cx = rng.uniform(rx + 2, tissue_w - rx - 2)
    cy = rng.uniform(ry + 2, h - ry - 2)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
    if texture == "blobs":
        pattern = (np.sin(xx / 3.0) * np.sin(yy / 3.0)) > 0.3
    elif texture == "stripes":
        pattern = np.sin((xx + yy) / 2.0) > 0
    elif texture == "dots":
        pattern = ((xx.astype(int) % 5) < 2) & ((yy.astype(int) % 5) < 2)
    else:
        pattern = np.ones_like(inside)
    lesion = inside & pattern
    img[lesion] = colour
    img[inside & ~pattern] = np.asarray(colour) * 0.5 + 0.5 * np.asarray((0.93, 0.72, 0.84))
    img[:, tissue_w:] = 0.96 + rng.normal(0, 0.005, (h, w - tissue_w, 1))  # blank glass
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    box = (int(cx - rx), int(cy - ry), int(np.ceil(cx + rx)), int(np.ceil(cy + ry)))
    return img, box


def _lesion_xml(image_path: str, box, class_name: str) -> str:
    return write_imagescope_xml(os.path.splitext(image_path)[0] + ".xml", [ellipse_region(box, class_name)])


def write_synthetic_bach(root, n_per_class: int = 4, size=(256, 192), seed: int = 0,
                         imagescope_xml: bool = False) -> list[dict]:
    """Write ``root/Photos/<class>/synthetic_<class>_<i>.tif``; returns ``[{"image", "label", "class_name", "box"}]``
    (plus ``"annotation"``, the lesion's ImageScope XML beside the image, when ``imagescope_xml``)."""
    rng = np.random.default_rng(seed)
    out = []
    for label, cls in enumerate(BACH_CLASSES):
        folder = os.path.join(os.fspath(root), "Photos", cls)
        os.makedirs(folder, exist_ok=True)
        for i in range(n_per_class):
            img, box = synthetic_tissue(label, size, rng, n_classes=4)
            path = os.path.join(folder, f"synthetic_{cls.lower()}_{i:03d}.tif")
            Image.fromarray(img).save(path)
            out.append({"image": path, "label": label, "class_name": cls, "box": box, "synthetic": True})
            if imagescope_xml:
                out[-1]["annotation"] = _lesion_xml(path, box, cls)
    return out


def write_synthetic_breakhis(root, n_patients: int = 6, images_per_patient: int = 3, size=(256, 192),
                             magnifications=("40X", "100X"), seed: int = 0, imagescope_xml: bool = False) -> list[dict]:
    """Write a synthetic BreaKHis tree; half the patients benign, half malignant, subtypes cycling.

    Returns ``[{"image", "label" (0 benign, 1 malignant), "class_name", "patient", "magnification", "subtype", "box"}]``
    (plus ``"annotation"``, the lesion's ImageScope XML beside the image, when ``imagescope_xml``).
    """
    rng = np.random.default_rng(seed)
    codes = list(SUBTYPE_CODES)
    benign_codes, malignant_codes = codes[:4], codes[4:]
    out = []
    for p in range(n_patients):
        malignant = p % 2 == 1
        code = (malignant_codes if malignant else benign_codes)[(p // 2) % 4]
        bm = "malignant" if malignant else "benign"
        patient = f"{14 + p % 3}-{10000 + 137 * p}SY"
        pdir = os.path.join(os.fspath(root), "histology_slides", "breast", bm, "SOB", SUBTYPE_CODES[code],
                            f"SOB_{bm[0].upper()}_{code}_{patient}")
        for mag in magnifications:
            folder = os.path.join(pdir, mag)
            os.makedirs(folder, exist_ok=True)
            for i in range(images_per_patient):
                img, box = synthetic_tissue(int(malignant), size, rng, n_classes=2)
                path = os.path.join(folder, f"SOB_{bm[0].upper()}_{code}-{patient}-{int(mag[:-1])}-{i + 1:03d}.png")
                Image.fromarray(img).save(path)
                out.append({"image": path, "label": int(malignant), "class_name": bm, "patient": patient,
                            "magnification": mag, "subtype": SUBTYPE_CODES[code], "box": box, "synthetic": True})
                if imagescope_xml:
                    out[-1]["annotation"] = _lesion_xml(path, box, bm)
    return out
