"""Datalists for chest X-rays in the Kermany / Guangzhou layout (``train|val|test/NORMAL|PNEUMONIA/*``).

The public ``val`` split has 16 images, so by default the validation split is carved from ``train``: stratified by
class, seeded, ``val_fraction`` of each class; ``test`` is never touched. Files may be JPEG/PNG/TIFF/BMP (RGB or
grey), DICOM (``.dcm``/``.dicom`` or no extension with a DICM preamble) or NIfTI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cadpipe.errors import CadpipeInputError

__all__ = [
    "KERMANY_CLASSES",
    "IMAGE_EXTENSIONS",
    "list_class_folder",
    "kermany_datalist",
    "kermany_splits",
    "validate_datalist",
    "image_datalist",
]

logger = logging.getLogger(__name__)

KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii", ".nii.gz", ".nrrd",
                    ".mha")


def _is_image(path: str) -> bool:
    name = os.path.basename(path).lower()
    if name.startswith("."):
        return False
    if name.endswith(IMAGE_EXTENSIONS):
        return True
    if "." not in name and os.path.isfile(path):  # DICOM files often have no extension
        try:
            with open(path, "rb") as f:
                f.seek(128)
                return f.read(4) == b"DICM"
        except OSError:
            return False
    return False


def list_class_folder(folder: str) -> list[str]:
    """Sorted image files in ``folder`` (recursively; DICOM series folders are not split into slices here)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.join(root, f) for f in files if _is_image(os.path.join(root, f)))
    return sorted(out)


def _split_items(dataset_dir: str, split: str, class_names: Sequence[str]) -> list[dict]:
    items = []
    for label, name in enumerate(class_names):
        folder = os.path.join(dataset_dir, split, name)
        if not os.path.isdir(folder):
            continue
        items.extend({"image": p, "label": label} for p in list_class_folder(folder))
    return items


def kermany_splits(
    dataset_dir: str,
    val_fraction: float = 0.1,
    seed: int = 0,
    use_public_val: bool = False,
    class_names: Sequence[str] = KERMANY_CLASSES,
) -> dict[str, list[dict]]:
    """All three splits of a Kermany-layout folder as MONAI datalists ``[{"image": path, "label": int}, ...]``.

    Args:
        dataset_dir: folder holding ``train/``, optionally ``val/`` and ``test/``, each with one folder per class.
        val_fraction: fraction of each class of ``train`` moved to validation (stratified, seeded). 0 keeps all of
            ``train`` for training and uses the public ``val`` folder.
        seed: seed of the carve, so that train and evaluate configs see the same split.
        use_public_val: also append the public ``val`` images to the validation split.
        class_names: class folder names in label order (label = index).

    Raises:
        CadpipeInputError: ``dataset_dir`` or ``dataset_dir/train`` missing, or no images in ``train``.
    """
    dataset_dir = os.fspath(dataset_dir)
    if not os.path.isdir(dataset_dir):
        raise CadpipeInputError(dataset_dir, "dataset folder not found")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train = _split_items(dataset_dir, "train", class_names)
    public_val = _split_items(dataset_dir, "val", class_names)
    test = _split_items(dataset_dir, "test", class_names)
    if not train and not test:
        raise CadpipeInputError(
            dataset_dir, f"no images in train/<{'|'.join(class_names)}>/ or test/<...>/ (Kermany layout expected)"
        )
    rng = np.random.default_rng(int(seed))
    tr, va = [], []
    if float(val_fraction) > 0:
        for label in range(len(class_names)):
            cls = [d for d in train if d["label"] == label]
            idx = rng.permutation(len(cls))
            n_val = int(round(len(cls) * float(val_fraction)))
            if len(cls) >= 2:
                n_val = min(max(n_val, 1), len(cls) - 1)  # at least one of each class on both sides
            else:
                n_val = 0
            va.extend(cls[i] for i in sorted(idx[:n_val]))
            tr.extend(cls[i] for i in sorted(idx[n_val:]))
        if use_public_val:
            va.extend(public_val)
    else:
        tr, va = list(train), list(public_val)
    return {"train": tr, "val": va, "test": test}


def kermany_datalist(
    dataset_dir: str,
    split: str = "train",
    val_fraction: float = 0.1,
    seed: int = 0,
    use_public_val: bool = False,
    validate: bool = True,
    class_names: Sequence[str] = KERMANY_CLASSES,
) -> list[dict]:
    """One split (``"train"``, ``"val"`` or ``"test"``) of :func:`kermany_splits`, bad images removed when ``validate``."""
    splits = kermany_splits(dataset_dir, val_fraction, seed, use_public_val, class_names)
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
    data = splits[split]
    return validate_datalist(data) if validate else data


def image_datalist(dataset_dir: str, validate: bool = True) -> list[dict]:
    """Every image under ``dataset_dir`` (any depth) as ``[{"image": path}]``, for inference; bad ones skipped.

    A file path instead of a folder gives a one-item list.
    """
    dataset_dir = os.fspath(dataset_dir)
    if os.path.isfile(dataset_dir):
        data = [{"image": dataset_dir}]
    elif os.path.isdir(dataset_dir):
        data = [{"image": p} for p in list_class_folder(dataset_dir)]
    else:
        raise CadpipeInputError(dataset_dir, "input file or folder not found")
    return validate_datalist(data) if validate else data


def _default_check(path: str) -> None:
    """Open ``path`` with the project loader (header and pixels); raise ``CadpipeInputError`` when unusable."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CadpipeInputError(path, "zero-byte file")
    try:
        from cadpipe.transforms import LoadStudyImage  # foundation loader (issue 2)
    except (ImportError, AttributeError):
        LoadStudyImage = None
    try:
        if LoadStudyImage is not None:
            img = LoadStudyImage(mode="gray")(path)
        else:  # before the foundation lands: MONAI's readers
            from monai.transforms import LoadImage

            img = LoadImage(image_only=True)(path)
    except CadpipeInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure means the file is unusable
        raise CadpipeInputError(path, f"cannot read image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    arr = np.asarray(img)
    if arr.size == 0:
        raise CadpipeInputError(path, "image has no pixels")
    if not np.isfinite(arr).all():
        raise CadpipeInputError(path, "image contains NaN or infinite values")


def validate_datalist(
    datalist: Sequence[Mapping],
    key: str = "image",
    check: Callable[[str], None] | None = None,
    report: list | None = None,
) -> list[dict]:
    """Drop items whose image cannot be read, logging a warning that names the file and the reason.

    Every file is opened once (header and pixels) so a corrupt JPEG or zero-byte file is found before training
    starts rather than crashing a DataLoader worker mid-epoch.

    Args:
        datalist: MONAI datalist (dicts with ``key`` holding a path).
        key: the image key.
        check: callable raising ``CadpipeInputError`` for a bad path (default: open with ``LoadStudyImage``).
        report: when given, ``(path, reason)`` tuples of skipped files are appended to it.

    Returns:
        the usable items, in order.
    """
    check = check or _default_check
    good = []
    for item in datalist:
        path = os.fspath(item[key])
        try:
            check(path)
        except CadpipeInputError as e:
            logger.warning("skipping bad image %s", e)
            if report is not None:
                report.append((e.path or path, e.reason))
            continue
        good.append(dict(item))
    if len(good) < len(datalist):
        logger.warning("skipped %d of %d images that could not be read", len(datalist) - len(good), len(datalist))
    return good
