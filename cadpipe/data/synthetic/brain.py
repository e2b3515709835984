"""Synthetic brain MRI with blob "tumours": LGG-style TIFF slice folders and MSD-style NIfTI volumes.

Every file and folder name contains ``synthetic``. The functions return the ground truth they wrote so tests can
check what the adapters and the bundle read back.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["write_lgg_synthetic", "write_msd_synthetic", "brain_phantom", "SYNTHETIC_AFFINE"]

# A non-identity affine (axes permuted and flipped, 1.5 mm voxels, shifted origin): inference must write masks back
# with exactly this affine and shape.
SYNTHETIC_AFFINE = np.array(
    [[0.0, -1.5, 0.0, 90.0], [-1.5, 0.0, 0.0, 110.0], [0.0, 0.0, 2.0, -60.0], [0.0, 0.0, 0.0, 1.0]]
)


def brain_phantom(
    shape: tuple[int, ...], rng: np.random.Generator, n_blobs: int = 1, blob_radius=(0.10, 0.2), z_scale: float = 1.0
):
    """A head-like ellipse with one or more bright spherical "tumours".

    Args:
        shape: spatial shape, 2D ``(X, Y)`` or 3D ``(X, Y, Z)``.
        rng: numpy random generator.
        n_blobs: number of tumours (0 gives a healthy image).
        blob_radius: radius range as a fraction of the smallest in-plane size.
        z_scale: through-plane radius relative to the in-plane one (as a fraction of each axis' size).

    Returns:
        ``(image, mask)``: image float32 in [0, 1] of ``shape``, mask uint8 {0, 1} of ``shape``.
    """
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radii = [0.85, 0.75, 0.9][: len(shape)]
    head = sum((g / r) ** 2 for g, r in zip(grids, radii)) <= 1.0
    image = 0.35 * head + 0.05 * rng.standard_normal(shape)
    mask = np.zeros(shape, dtype=np.uint8)
    size = min(shape[:2])
    for _ in range(n_blobs):
        r = rng.uniform(*blob_radius) * size
        centre = [rng.uniform(0.3, 0.7) * s for s in shape[:2]] + [rng.uniform(0.35, 0.65) * s for s in shape[2:]]
        idx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
        # anisotropic through-plane radius so a few slices of a volume are tumour-free
        d2 = sum(((i - c) / (r if k < 2 else max(z_scale * r * shape[2] / size, 1.0))) ** 2 for k, (i, c) in enumerate(zip(idx, centre)))
        blob = d2 <= 1.0
        mask[blob] = 1
    image = image + 0.55 * mask
    return np.clip(image, 0, 1).astype(np.float32), mask


def write_lgg_synthetic(
    root: str | os.PathLike, n_patients: int = 4, n_slices: int = 12, size: int = 64, seed: int = 0
) -> dict[str, dict]:
    """Write a kaggle_3m-style LGG folder: ``root/<patient>/<patient>_<slice>.tif`` + ``..._mask.tif``.

    Slices are RGB uint8 TIFF (channels: pre-contrast, FLAIR, post-contrast; the tumour is brightest in FLAIR),
    masks uint8 0/255 single channel. Slice numbers run 1..n_slices (so lexicographic and numeric order differ
    from slice 10 on).

    Returns:
        ``{patient: {"folder": str, "image": (3, size, size, n_slices) uint8, "mask": (size, size, n_slices) uint8}}``
        with arrays in numpy ``[row, col, slice]`` order as written (channels first for the image).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    truth = {}
    for p in range(n_patients):
        patient = f"TCGA_SYN_{p:04d}_synthetic"
        folder = os.path.join(os.fspath(root), patient)
        os.makedirs(folder, exist_ok=True)
        vol, mask = brain_phantom((size, size, n_slices), rng, n_blobs=1, blob_radius=(0.12, 0.22))
        rgb = np.stack([0.8 * vol * (1 - 0.5 * mask), vol, 0.9 * vol], axis=0)  # FLAIR channel keeps the tumour bright
        rgb = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        for s in range(n_slices):
            stem = os.path.join(folder, f"{patient}_{s + 1}")
            Image.fromarray(np.moveaxis(rgb[..., s], 0, -1), mode="RGB").save(stem + ".tif")
            Image.fromarray((mask[..., s] * 255).astype(np.uint8), mode="L").save(stem + "_mask.tif")
        truth[patient] = {"folder": folder, "image": rgb, "mask": mask}
    return truth


def write_msd_synthetic(
    root: str | os.PathLike,
    n_train: int = 4,
    n_test: int = 1,
    shape: tuple[int, int, int] = (48, 48, 12),
    modalities: tuple[str, ...] = ("FLAIR", "T1w"),
    labels: dict[str, str] | None = None,
    affine: np.ndarray | None = None,
    seed: int = 0,
    write_dataset_json: bool = True,
) -> dict[str, dict]:
    """Write an MSD-style folder: ``imagesTr/``, ``labelsTr/``, ``imagesTs/`` and ``dataset.json``.

    Images are 4D NIfTI ``(X, Y, Z, modality)`` (3D when one modality) with ``affine`` (default
    ``SYNTHETIC_AFFINE``, non-identity). Labels follow MSD BraTS: tumour voxels get labels 1, 2 or 3 (all "tumour").

    Returns:
        ``{case: {"image": path, "label": path or None, "mask": (X, Y, Z) uint8 binary, "affine": 4x4}}``.
    """
    import json

    import nibabel as nib

    rng = np.random.default_rng(seed)
    affine = SYNTHETIC_AFFINE if affine is None else np.asarray(affine, dtype=float)
    root = os.fspath(root)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    truth, training, test = {}, [], []
    for i in range(n_train + n_test):
        case = f"BRATS_synthetic_{i:03d}"
        vol, mask = brain_phantom(shape, rng, n_blobs=1, z_scale=2.0)
        # first modality FLAIR-like (tumour bright), the others T1-like (tumour darker than brain)
        chans = [vol if m == 0 else (0.8 - 0.1 * m) * vol * (1 - 0.5 * mask) for m in range(len(modalities))]
        img = np.stack(chans, axis=-1) if len(chans) > 1 else chans[0]
        is_train = i < n_train
        img_path = os.path.join(root, "imagesTr" if is_train else "imagesTs", case + ".nii.gz")
        nib.save(nib.Nifti1Image((img * 1000).astype(np.float32), affine), img_path)
        label_path = None
        if is_train:
            # sub-labels as in MSD Task01 (1 oedema, 2 non-enhancing, 3 enhancing): rings by distance
            lab = mask.copy()
            lab[(mask > 0) & (rng.random(shape) < 0.3)] = 2
            lab[(mask > 0) & (rng.random(shape) < 0.2)] = 3
            label_path = os.path.join(root, "labelsTr", case + ".nii.gz")
            nib.save(nib.Nifti1Image(lab.astype(np.uint8), affine), label_path)
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        else:
            test.append(f"./imagesTs/{case}.nii.gz")
        truth[case] = {"image": img_path, "label": label_path, "mask": mask, "affine": affine}
    if write_dataset_json:
        meta = {
            "name": "BrainTumour_synthetic",
            "modality": {str(k): m for k, m in enumerate(modalities)},
            "labels": labels or {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "numTraining": n_train,
            "numTest": n_test,
            "training": training,
            "test": test,
        }
        with open(os.path.join(root, "dataset.json"), "w") as f:
            json.dump(meta, f, indent=2)
    return truth
