"""A predicted mask as a DICOM Segmentation object (highdicom) referencing the source instances.

The mask comes in MONAI's axes and the input's geometry (``affine`` in RAS, what ``LoadImage`` gives). Each
source instance's pixel grid is mapped through its ImagePositionPatient / ImageOrientationPatient / PixelSpacing
(LPS) into RAS and then into the mask's voxel indices, so the SEG frames line up with the source frames whatever
the reader's axis order. A 2D single image (a radiograph, with or without geometry) is mapped by the axis
convention (``mask.T``: MONAI's (X=columns, Y=rows) back to DICOM's rows x columns).
"""

from __future__ import annotations

import os

import numpy as np

from cadpipe.pipelines.outputs.files import atomic_writer_path

__all__ = ["write_dicom_seg", "mask_to_source_frames"]


def mask_to_source_frames(mask: np.ndarray, affine: np.ndarray, datasets: list) -> np.ndarray:
    """Resample ``mask`` (X, Y[, Z], RAS ``affine``) onto each source instance's (rows, cols) grid.

    Each instance's geometry is read as the DICOM reader reads it (:mod:`cadpipe.transforms.readers.io_dicom`): its
    ImageOrientationPatient normalised (oblique planes included), its pixel spacing or one unit per pixel when the
    file gives no usable one (``0\\0``), so the mapping is the inverse of the one the mask's affine came from. An
    instance without usable patient geometry is matched by position: slice ``k`` of the reader's slice order
    gets ``mask[..., k]``.

    Returns ``(n_frames, rows, cols)`` uint8.
    """
    from cadpipe.transforms.readers.io_dicom import DicomReader, patient_geometry, pixel_spacing

    frames = []
    inv = np.linalg.inv(affine)
    order = DicomReader._slice_order(datasets) if mask.ndim == 3 else list(range(len(datasets)))
    position = {index: k for k, index in enumerate(order)}
    for index, ds in enumerate(datasets):
        rows, cols = int(ds.Rows), int(ds.Columns)
        ipp, iop = patient_geometry(ds)
        if mask.ndim == 2 or ipp is None:
            m2 = mask if mask.ndim == 2 else mask[..., min(position[index], mask.shape[2] - 1)]
            frames.append((m2.T[:rows, :cols] > 0).astype(np.uint8))
            continue
        dr, dc = pixel_spacing(ds) or (1.0, 1.0)  # row, column spacing (one unit per pixel when unknown)
        rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = ipp[None, :] + cc.reshape(-1, 1) * dc * iop[None, :3] + rr.reshape(-1, 1) * dr * iop[None, 3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        vox = (inv[:3, :3] @ ras.T + inv[:3, 3:4]).T
        idx = np.rint(vox).astype(int)
        ok = np.all((idx >= 0) & (idx < np.array(mask.shape[:3])), axis=1)
        vals = np.zeros(idx.shape[0], dtype=np.uint8)
        vals[ok] = mask[idx[ok, 0], idx[ok, 1], idx[ok, 2]] > 0
        frames.append(vals.reshape(rows, cols))
    return np.stack(frames)


# Patient/study attributes highdicom copies from the source into the SEG. They are Type 2 (must be present, may be
# empty) in the SEG, but many real radiographs (and the foundation's synthetic CXRs) lack some of them, and
# highdicom then fails with AttributeError. Missing ones are added empty to the in-memory source copy only.
_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                      "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2_attributes(ds):
    """The in-memory source prepared for highdicom (the file on disk is not touched):

    - missing Type 2 patient/study attributes added empty (see ``_TYPE2_FROM_SOURCE``);
    - a projection image without a Frame of Reference (DX/CR/MG/SC radiograph) loses ``PixelSpacing``: highdicom
      would copy it into a Pixel Measures item without Slice Thickness, which is valid DICOM (Slice Thickness is
      required only with a Frame of Reference) but which highdicom's own ``Segmentation.from_dataset`` rejects.
      Such a SEG is positioned by its reference to the source instance (same rows x columns), as viewers expect.
    """
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if "FrameOfReferenceUID" not in ds and "PixelSpacing" in ds and "SliceThickness" not in ds:
        del ds.PixelSpacing
    return ds


def write_dicom_seg(mask: np.ndarray, affine: np.ndarray, source_files: list[str], out_path: str,
                    label: str = "lesion", algorithm: str = "cadpipe", version: str = "0",
                    bundle: dict | None = None) -> str:
    """Write a binary DICOM SEG for ``mask > 0`` over ``source_files``; atomic (temp + rename). Returns the path.

    ``label``: the segmented class name; its segmented property category and type are the codes ``bundle``
    declares for it (:mod:`~cadpipe.pipelines.outputs.dicom_codes`), as are the series number and description.
    A projection image without a Frame of Reference gets the source's Patient Orientation when it is two valid
    values, else an empty one (Type 2C: present, unknown)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from cadpipe.pipelines.outputs import dicom_codes
    from cadpipe.pipelines.outputs.secondary_capture import valid_patient_orientation

    bundle = dict(bundle or {"name": algorithm, "version": version})

    datasets = [_with_type2_attributes(pydicom.dcmread(p)) for p in source_files]
    if len(datasets) > 1 and hasattr(datasets[0], "ImagePositionPatient"):
        normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
        datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    frames = mask_to_source_frames(mask, affine, datasets)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label[:64],
        segmented_property_category=dicom_codes.class_category(bundle, label),
        segmented_property_type=dicom_codes.class_type(bundle, label),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm[:64], family=codes.cid7162.ArtificialIntelligence, version=version or "0"
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=dicom_codes.series_number(bundle, "seg"),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="cadpipe",
        manufacturer_model_name=algorithm[:64],
        software_versions=version or "0",
        device_serial_number="0",
        omit_empty_frames=False,
        series_description=dicom_codes.series_description(bundle, "seg"),
    )
    if "FrameOfReferenceUID" not in seg:  # positioned by its source image alone: say how that image is oriented
        seg.PatientOrientation = valid_patient_orientation(datasets[0].get("PatientOrientation")) or ""
    tmp = atomic_writer_path(out_path)
    seg.save_as(tmp)
    os.replace(tmp, out_path)
    return out_path
