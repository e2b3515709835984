"""Synthetic NIH ChestX-ray14 folder: radiographs with synthetic "pathologies" drawn in known places, labels in an
NIH-style ``Data_Entry_2017.csv`` and patient-wise ``train_val_list.txt`` / ``test_list.txt``.

Pathology ``k`` (of the 14) is a bright disk at a fixed place for that class inside the lung fields; an image without
one is ``No Finding``. File names are ``synthetic_<patient:08d>_<k:03d>.png``. Returns ``{file name: label list}``.
"""

from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from cadpipe.data.chestxray14 import NIH_LABELS
from cadpipe.data.synthetic.lungs import synthetic_lung_cxr

__all__ = ["write_synthetic_chestxray14"]


def _place(k: int) -> tuple[float, float]:
    side = 0.31 if k % 2 == 0 else 0.69  # classes 0-3 are well apart (upper/lower, left/right); later ones overlap
    low = (k // 2) % 2
    return 0.3 + 0.25 * low + 0.03 * (k // 4), side + (0.05 if low else -0.05)  # (row, col) as fractions


def write_synthetic_chestxray14(root: str, n_patients: int = 12, images_per_patient: int = 2, size: int = 64,
                                classes: tuple[int, ...] = tuple(range(14)), test_fraction: float = 0.25,
                                p_finding: float = 0.5, seed: int = 0, nested: bool = True, radius: float = 0.1
                                ) -> dict[str, list[str]]:
    """Write the folder; ``nested`` puts images in ``images_001/images/`` (the archive layout), else ``images/``."""
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, "images_001", "images") if nested else os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    rows, truth, split = [], {}, {}
    n_test = max(1, int(round(n_patients * test_fraction)))
    yy, xx = np.mgrid[0:size, 0:size] / size
    for p in range(n_patients):
        for k in range(images_per_patient):
            img, _, _ = synthetic_lung_cxr(size, rng)
            found = [c for c in classes if rng.random() < p_finding / max(1, len(classes)) * 2]
            for c in found:
                r, cc = _place(c)
                img[((yy - r) ** 2 + (xx - cc) ** 2) < radius**2] = 0.95
            name = f"synthetic_{p + 1:08d}_{k:03d}.png"
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(os.path.join(img_dir, name))
            labels = [NIH_LABELS[c] for c in found] or ["No Finding"]
            truth[name] = labels
            rows.append([name, "|".join(labels), k, p + 1, 50, "M", "PA", size, size, 0.143, 0.143])
            split[name] = "test" if p < n_test else "train_val"
    with open(os.path.join(root, "Data_Entry_2017.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"])
        w.writerows(rows)
    for lst in ("train_val", "test"):
        with open(os.path.join(root, f"{lst}_list.txt"), "w") as f:
            f.write("".join(n + "\n" for n, s in split.items() if s == lst))
    return truth
