"""Segmentation: a label map in the input's geometry per image or volume.

- columns: ``lesion_voxels`` and the foreground's area (``lesion_area_cm2``, 2D) or volume (``lesion_volume_ml``,
  3D) from the affine (None when the file gives no usable spacing; the row's ``warnings`` then says why);
- files: the mask as NIfTI (``<unit>_mask.nii.gz``), a DICOM SEG for DICOM input (``<unit>_seg.dcm``), the
  overlay (``<unit>_overlay.png``); report: the structure's area or volume;
- DICOM SR: the SEG and its volume or area; MONAI Label: the label image (2D as ``uint8``);
- batched scoring: 2D bundles, activation batched then the inversion per item.
"""

from __future__ import annotations

import os

import numpy as np

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.kinds.base import TaskKind, UnitOutputs, display_image, original_image

__all__ = ["Segmentation"]


def _geometry_note(*items: dict) -> str:
    """The reader's ``geometry_note`` (what of the file's geometry could not be used,
    :mod:`cadpipe.transforms.readers.io_dicom`) from the first of the items' images that carries one, else ``""``."""
    for item in items:
        for key in ("pred", "image"):
            meta = getattr(item.get(key), "meta", None)
            note = meta.get("geometry_note") if isinstance(meta, dict) else None
            if note:
                return str(note[0] if isinstance(note, (list, tuple)) else note)
    return ""


class Segmentation(TaskKind):
    name = "segmentation"
    monailabel_type = "segmentation"
    batched_output = "label_map"

    def columns(self, runner, out: dict) -> dict:
        mask = runner.label_map(out)
        n = int((mask > 0).sum())
        size = runner.unit_size(out, mask.ndim)
        if mask.ndim == 3:  # a volume: mL
            return {"lesion_voxels": n, "lesion_volume_ml": float(n * size / 1000.0) if size else None}
        return {"lesion_voxels": n, "lesion_area_cm2": float(n * size / 100.0) if size else None}  # 2D: cm²

    def batched_unsupported(self, spatial_dims: int) -> str | None:
        if spatial_dims != 2:
            return f"a {spatial_dims}D segmentation bundle has no batched preprocessing"
        return None

    @staticmethod
    def structure(runner) -> str:
        """The foreground's name: the second class name, else ``lesion``."""
        return runner.class_names[1] if len(runner.class_names) > 1 else "lesion"

    def write_unit(self, u: UnitOutputs) -> None:
        import nibabel as nib

        from cadpipe.pipelines.outputs.files import atomic_writer_path
        from cadpipe.pipelines.outputs.findings import segmentation_caption, segmentation_finding
        from cadpipe.pipelines.outputs.report import overlay_png

        runner, out = u.runner, u.out
        mask = runner.label_map(out)
        affine = runner.affine(out)
        nii = u.path("mask.nii.gz")
        tmp = atomic_writer_path(nii)
        nib.save(nib.Nifti1Image(mask, affine), tmp)
        os.replace(tmp, nii)
        u.outputs["mask"] = u.rel(nii)
        if u.unit.kind == "dicom" and u.unit.dicom_files:
            self._dicom_seg(u, mask, affine)
        png, plain = u.path("overlay.png"), u.path("image.png")
        original = original_image(runner, u.unit, u.pre_item)  # the image as loaded, when on the mask's grid
        if original is None or original.shape != mask.shape:
            original = display_image(runner, u.pre_item, mask)
        overlay_png(original, mask=mask, path=png, durable=False, plain_path=plain)
        u.outputs["image"] = u.rel(plain)
        structure = self.structure(runner)
        u.add_overlay(png, segmentation_caption(structure, mask.ndim))
        size = runner.unit_size(out, mask.ndim)
        if size is None and u.unit.kind == "dicom":  # a DICOM file without usable spacing: say why sizes are pixels
            u.warn(_geometry_note(out, u.pre_item) or "no usable pixel spacing in the file: sizes are in pixels")
        u.findings.append(segmentation_finding(structure, u.row["lesion_voxels"], mask.ndim, size))

    def _dicom_seg(self, u: UnitOutputs, mask: np.ndarray, affine: np.ndarray) -> None:
        from cadpipe.pipelines.outputs.dicom_seg import write_dicom_seg

        seg = u.path("seg.dcm")
        try:  # an optional output: without it the unit keeps its mask and numbers, and the row says why
            write_dicom_seg(mask, affine, u.unit.dicom_files, seg, label=self.structure(u.runner),
                            algorithm=u.info["name"], version=u.info["version"], bundle=u.info)
            u.outputs["dicom_seg"] = u.rel(seg)
        except Exception as err:  # noqa: BLE001
            reason = err.reason if isinstance(err, CadpipeInputError) else f"{type(err).__name__}: {err}"
            u.row["warnings"] = f"no DICOM SEG written: {str(reason).strip()[:300]}"

    def sr_content(self, row: dict, outputs: dict, out_dir: str, bundle: dict) -> dict:
        """The structure, its size (pixels/voxels; area or volume only when the source gives a spacing) and the
        SEG when one was written; the SR reports the finding without a SEG reference otherwise."""
        if row.get("lesion_voxels") is None:
            return {}
        import pydicom

        names = list(bundle.get("class_names") or [])
        content: dict = {"structure": names[1] if len(names) > 1 else "lesion", "voxels": int(row["lesion_voxels"]),
                         "ndim": 2 if "lesion_area_cm2" in row else 3}
        if outputs.get("dicom_seg"):
            content["segmentation"] = pydicom.dcmread(os.path.join(out_dir, outputs["dicom_seg"]))
        if row.get("lesion_volume_ml") is not None:  # volumes; 2D images have an area instead
            content["volume_ml"] = float(row["lesion_volume_ml"])
        elif row.get("lesion_area_cm2") is not None:
            content["area_cm2"] = float(row["lesion_area_cm2"])
        return content
