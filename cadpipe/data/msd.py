"""Medical Segmentation Decathlon (MSD) NIfTI layout adapter: ``imagesTr/``, ``labelsTr/``, ``imagesTs/``,
optional ``dataset.json``. Multi-modal volumes are 4D NIfTI whose last axis becomes the channel axis on loading.
A plain folder of NIfTI volumes (no ``imagesTr``) is accepted for inference. NRRD (``.nrrd``/``.nhdr``) and
MetaImage (``.mha``/``.mhd``) volumes are taken wherever NIfTI is (``VOLUME_SUFFIXES``), read with their geometry by
:class:`cadpipe.transforms.LoadStudyImage`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.readers.io_any import VOLUME_SUFFIXES as _FORMAT_OF_SUFFIX

__all__ = ["msd_datalist", "msd_inference_list", "split_cases", "read_dataset_json", "NIFTI_SUFFIXES",
           "VOLUME_SUFFIXES"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
VOLUME_SUFFIXES = tuple(sorted(_FORMAT_OF_SUFFIX, key=len, reverse=True))  # longest first: .nii.gz before .nii


def _is_nifti(name: str) -> bool:
    """A volume file (NIfTI, NRRD, MetaImage), not a hidden one."""
    return name.lower().endswith(VOLUME_SUFFIXES) and not name.startswith(("._", "."))


def read_dataset_json(dataset_dir: str | os.PathLike) -> dict | None:
    """The MSD ``dataset.json`` as a dict, ``None`` when absent; malformed JSON raises ``CadpipeInputError``."""
    path = os.path.join(os.fspath(dataset_dir), "dataset.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CadpipeInputError(path, f"cannot parse dataset.json: {e}") from e


def msd_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """Training cases ``[{"image", "label", "case"}]``: from ``dataset.json`` "training" when present, else by
    matching ``imagesTr/<name>`` with ``labelsTr/<name>``.

    Raises:
        CadpipeInputError: no ``imagesTr`` folder, an image without its label, a listed file that does not exist.
    """
    root = os.fspath(dataset_dir)
    meta = read_dataset_json(root)
    items = []
    if meta and meta.get("training"):
        for entry in meta["training"]:
            img = os.path.normpath(os.path.join(root, entry["image"]))
            lab = os.path.normpath(os.path.join(root, entry["label"]))
            for p in (img, lab):
                if not os.path.isfile(p):
                    raise CadpipeInputError(p, "listed in dataset.json but the file does not exist")
            items.append({"image": img, "label": lab})
    else:
        img_dir = os.path.join(root, "imagesTr")
        if not os.path.isdir(img_dir):
            raise CadpipeInputError(root, "not an MSD layout: no imagesTr/ folder")
        for name in sorted(n for n in os.listdir(img_dir) if _is_nifti(n)):
            lab = os.path.join(root, "labelsTr", name)
            if not os.path.isfile(lab):
                raise CadpipeInputError(os.path.join(img_dir, name), f"image has no label: expected labelsTr/{name}")
            items.append({"image": os.path.join(img_dir, name), "label": lab})
    if not items:
        raise CadpipeInputError(root, "no training volumes found in imagesTr/")
    for d in items:
        d["case"] = _case_name(d["image"])
    return items


def _case_name(path: str) -> str:
    name = os.path.basename(path)
    for suf in VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def msd_inference_list(dataset_dir: str | os.PathLike) -> list[dict]:
    """Volumes to segment: ``imagesTs/`` when present, else ``imagesTr/``, else the NIfTI files in the folder."""
    root = os.fspath(dataset_dir)
    for sub in ("imagesTs", "imagesTr", ""):
        folder = os.path.join(root, sub) if sub else root
        if os.path.isdir(folder):
            files = sorted(n for n in os.listdir(folder) if _is_nifti(n))
            if files:
                return [{"image": os.path.join(folder, n), "case": _case_name(n)} for n in files]
    raise CadpipeInputError(root, "no NIfTI, NRRD or MetaImage volumes found (looked in imagesTs/, imagesTr/ and the "
                                  "folder itself)")


def split_cases(items: list[dict], val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[dict]]:
    """Seeded case-level split into ``{"train", "val"}`` (at least one validation case when there are two or more)."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = max(1, round(len(items) * val_fraction)) if val_fraction > 0 and len(items) > 1 else 0
    val = sorted(order[:n_val].tolist())
    return {"val": [items[i] for i in val], "train": [items[i] for i in range(len(items)) if i not in set(val)]}
