"""A unit's findings as a DICOM Structured Report: a highdicom TID 1500 Measurement Report.

What the report holds (every measurement group carries the algorithm identification: bundle name, bundle version
and ``model_sha256=<hex>`` as its parameter, and the evaluation ``Intended use`` = ``Not for clinical use``):

- classification and multi-label: one image-level group (TID 1501) per class, so a generic TID 1500 reader sees
  one finding per group: finding type = the class's code, measurements ``Probability`` and (where the model has
  one) the operating ``Threshold Value`` (UCUM ``1``), evaluation ``Presence of property`` = ``Present`` (the
  class is predicted: at or above its threshold, or the arg-max of a multi-class model) or ``Absent``;
- detection: one planar ROI group (TID 1410) per box, the box as a closed SCOORD ``POLYLINE`` on the source image
  (pixel column, row), finding type = what a box is (the bundle's ``finding``, e.g. Mass), evaluation
  ``Pathology`` = the box's class (benign / malignant), measurements ``Probability`` = the detection score and
  ``Probability of cancer`` = the box's malignancy when the model gives one; no box at all: one image-level group
  ``no detections`` whose ``Presence of property`` is ``Absent`` ("nothing found" is a result too);
- segmentation: one group for the segmented structure (finding type = its class code) with its size, referencing
  segment 1 of the DICOM SEG: planar ROI (TID 1410, area) for a 2D image, volumetric ROI (TID 1411, volume) for a
  volume. The size is physical (cm², mL) only when the source gives a pixel spacing; otherwise it is a count of
  pixels (UCUM ``{pixels}``) / voxels (``{voxels}``). Without a SEG (one could not be made) the same finding
  and size go into an image-level group, without the segment reference.

When the source is a paired body part with a side (a mammogram: Body Part Examined ``BREAST``, Image Laterality
``L``), every group has the finding site with its laterality (Breast, Left).

Codes come from the bundle (:mod:`cadpipe.pipelines.outputs.dicom_codes`); the device observer UID is derived from
the model's sha256, the series number and description name the bundle, ContentQualification is ``RESEARCH``.
All results reference the source study (same Study Instance UID, a new series).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cadpipe.pipelines.outputs import dicom_codes

__all__ = ["build_measurement_report", "CADPIPE_SCHEME", "NOT_FOR_CLINICAL_USE", "class_code", "read_report"]

CADPIPE_SCHEME = dicom_codes.PRIVATE_SCHEME
SERIES_DESCRIPTION = "cadpipe findings (not for clinical use)"  # results of a bundle without a name

INTENDED_USE = ("USE", "Intended use")  # private: DICOM has no concept for it
NO_DETECTIONS = "no detections"  # tracking identifier of the group of a detection without any box
NOT_FOR_CLINICAL_USE = ("NFCU", "Not for clinical use")
_PIXELS = ("{pixels}", "UCUM", "pixels")
# paired body parts (Body Part Examined -> SNOMED CT) whose side the SR states as a finding site with laterality
_PAIRED_SITES = {"BREAST": ("76752008", "SCT", "Breast"), "KNEE": ("72696002", "SCT", "Knee"),
                 "HAND": ("85562004", "SCT", "Hand"), "FOOT": ("56459004", "SCT", "Foot"),
                 "SHOULDER": ("16982005", "SCT", "Shoulder"), "HIP": ("29836001", "SCT", "Hip"),
                 "EYE": ("81745001", "SCT", "Eye"), "KIDNEY": ("64033007", "SCT", "Kidney")}
_VOXELS = ("{voxels}", "UCUM", "voxels")


def _code(value: str, meaning: str):
    return dicom_codes.concept((value, CADPIPE_SCHEME, meaning))


def class_code(name: str, bundle: dict | None = None):
    """The coded concept of a bundle class name (declared by the bundle, else scheme ``99CADPIPE``)."""
    return dicom_codes.class_type(bundle, str(name))


def _algorithm(bundle: dict):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name=str(bundle.get("name") or "cadpipe")[:64],
                                         version=str(bundle.get("version") or "0")[:64],
                                         parameters=[f"model_sha256={bundle.get('model_sha256') or 'unknown'}"])


def _intended_use():
    import highdicom as hd

    return hd.sr.QualitativeEvaluation(name=_code(*INTENDED_USE), value=_code(*NOT_FOR_CLINICAL_USE))


def _presence(present: bool):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.QualitativeEvaluation(name=codes.DCM.PresenceOfProperty,
                                       value=codes.SCT.Present if present else codes.SCT.Absent)


def _finding_sites(source) -> list:
    """The source's side as a finding site (e.g. Breast, laterality Left) when it is a paired body part with an
    L/R laterality in the header; else none."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    side = next((str(source.get(k, "") or "").strip().upper() for k in ("ImageLaterality", "Laterality")
                 if str(source.get(k, "") or "").strip().upper() in ("L", "R")), "")
    part = _PAIRED_SITES.get(str(source.get("BodyPartExamined", "") or "").strip().upper())
    if not side or part is None:
        return []
    return [hd.sr.FindingSite(anatomic_location=dicom_codes.concept(part),
                              laterality=codes.SCT.Left if side == "L" else codes.SCT.Right)]


def _number(name, value: float, unit, algo):
    import highdicom as hd

    return hd.sr.Measurement(name=name, value=float(value), unit=dicom_codes.concept(unit), algorithm_id=algo)


def _size(algo, *, volume_ml, area_cm2, voxels, ndim: int):
    """The size measurement: physical when given, else the pixel / voxel count."""
    from pydicom.sr.codedict import codes

    if volume_ml is not None:
        return _number(codes.SCT.Volume, volume_ml, ("mL", "UCUM", "milliliter"), algo)
    if area_cm2 is not None:
        return _number(codes.SCT.Area, area_cm2, codes.UCUM.SquareCentimeter, algo)
    if ndim == 3:
        return _number(codes.SCT.Volume, voxels, _VOXELS, algo)
    return _number(codes.SCT.Area, voxels, _PIXELS, algo)


def build_measurement_report(sources: Sequence, bundle: dict, *, probabilities: dict[str, float] | None = None,
                             predicted: Sequence[str] = (), thresholds: dict[str, float] | None = None,
                             boxes: Sequence[dict] | None = None, volume_ml: float | None = None,
                             area_cm2: float | None = None, voxels: int | None = None, ndim: int = 3,
                             structure: str = "lesion", segmentation=None, series_number: int | None = None):
    """A Comprehensive 3D SR (TID 1500) for one scored unit; see the module docstring for its content.

    Args:
        sources: the unit's source instances (pydicom datasets; headers suffice). The first one is the image the
            image-level groups and boxes refer to.
        bundle: ``name``, ``version``, ``model_sha256`` of the bundle that produced the findings, and its ``dicom``
            declaration (codes, series; see :mod:`~cadpipe.pipelines.outputs.dicom_codes`).
        probabilities: class name -> probability (classification / multi-label).
        predicted: the predicted class names (classification: one; multi-label: those at or above their
            threshold, maybe none).
        thresholds: class name -> operating threshold, for the classes whose call depends on one.
        boxes: detection boxes ``{"box": [col_min, row_min, col_max, row_max], "label": str, "score": float[,
            "malignancy": float]}`` in the source image's pixel grid.
        volume_ml / area_cm2: the segmented size in mL (a volume) or cm² (a 2D image); ``voxels``: its count of
            pixels / voxels. When a source gives no pixel spacing the report holds the count (``ndim`` 2 or 3 when
            neither physical size is given), never a size computed from an assumed spacing.
        structure: the segmented class name (its code is the finding type).
        segmentation: the DICOM SEG dataset whose segment 1 the size refers to (None: no SEG could be made).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = _algorithm(bundle)
    ref = sources[0]
    src_group = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ref)]
    sites = _finding_sites(ref)
    groups = []
    predicted = [str(p) for p in predicted]
    for i, (name, p) in enumerate((probabilities or {}).items(), start=1):
        measurements = [_number(codes.DCM.Probability, p, codes.UCUM.NoUnits, algo)]
        if thresholds and name in thresholds:
            measurements.append(_number(codes.DCM.ThresholdValue, thresholds[name], codes.UCUM.NoUnits, algo))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"class {i}: {name}"[:64]),
            finding_type=class_code(name, bundle), algorithm_id=algo, source_images=src_group, finding_sites=sites,
            measurements=measurements, qualitative_evaluations=[_presence(name in predicted), _intended_use()]))
    if boxes is not None and len(boxes) == 0:  # a detection without any box: say so
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=NO_DETECTIONS),
            finding_type=dicom_codes.box_finding(bundle), algorithm_id=algo, source_images=src_group,
            finding_sites=sites, qualitative_evaluations=[_presence(False), _intended_use()]))
    for i, b in enumerate(boxes or [], start=1):
        c0, r0, c1, r1 = (max(0.0, float(v)) for v in b["box"])
        polyline = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float)
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
                                   source_image=hd.sr.SourceImageForRegion.from_source_image(ref))
        measurements = [_number(codes.DCM.Probability, b["score"], codes.UCUM.NoUnits, algo)]
        if b.get("malignancy") is not None:
            measurements.append(_number(codes.DCM.ProbabilityOfCancer, b["malignancy"], codes.UCUM.NoUnits, algo))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"box {i}"),
            referenced_region=region, finding_type=dicom_codes.box_finding(bundle), algorithm_id=algo,
            finding_sites=sites, measurements=measurements,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Pathology,
                                                                 value=class_code(str(b["label"]), bundle)),
                                     _intended_use()]))
    if voxels is not None and not all(dicom_codes.has_pixel_spacing(s) for s in sources):
        # a physical size only from a spacing the source gives (else the count, never a made-up cm² / mL)
        ndim = 3 if volume_ml is not None else 2 if area_cm2 is not None else ndim
        volume_ml = area_cm2 = None
    if volume_ml is not None or area_cm2 is not None or voxels is not None:
        size = _size(algo, volume_ml=volume_ml, area_cm2=area_cm2, voxels=voxels,
                     ndim=3 if volume_ml is not None else 2 if area_cm2 is not None else ndim)
        common = dict(tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="segment 1"),
                      finding_type=class_code(structure, bundle), algorithm_id=algo, measurements=[size],
                      finding_sites=sites,
                      qualitative_evaluations=[_intended_use()])
        seg_sources = [hd.sr.SourceImageForSegmentation.from_source_image(s) for s in sources]
        if segmentation is None:  # no SEG could be made: the finding and its size, on the source image
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(source_images=src_group, **common))
        elif size.name.meaning == "Area" and len(sources) == 1:  # a 2D image: planar ROI (TID 1410)
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegmentationFrame(
                    sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
                    frame_number=1, segment_number=1, source_image=seg_sources[0]), **common))
        else:  # a volume: volumetric ROI (TID 1411). Built from the sources, not ReferencedSegment.from_segmentation:
            # that one needs the segment in per-frame functional groups, and highdicom writes a one-segment SEG's
            # into the shared ones
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
                    segment_number=1, source_images=seg_sources), **common))
    if not groups:
        raise ValueError("nothing to report: no probabilities, boxes or segmentation size")
    sha = str(bundle.get("model_sha256") or "")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=dicom_codes.device_uid(bundle), name="cadpipe", manufacturer_name="cadpipe",
            model_name=str(bundle.get("name") or "cadpipe")[:64], serial_number=sha[:16] or None))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    evidence = list(sources) + ([segmentation] if segmentation is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=hd.UID(),
        series_number=series_number if series_number is not None else dicom_codes.series_number(bundle, "sr"),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="cadpipe", is_complete=True,
        series_description=dicom_codes.series_description(bundle, "sr") if bundle.get("name") else
        SERIES_DESCRIPTION, content_qualification="RESEARCH")
    _frame_references_without_segment_number(sr)
    return sr


def _frame_references_without_segment_number(ds) -> None:
    """A reference to a SEG frame names the frame only: the Image SOP Instance Reference Macro forbids Referenced
    Segment Number beside Referenced Frame Number (the frame of a one-segment SEG is that segment); highdicom
    writes both."""
    for item in getattr(ds, "ContentSequence", []):
        for ref in getattr(item, "ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                del ref.ReferencedSegmentNumber
        _frame_references_without_segment_number(item)


def read_report(path_or_dataset, bundle: dict | None = None) -> dict:
    """Parse a report written by :func:`build_measurement_report` back (through highdicom's own SR parser, which
    validates the TID 1500 structure). Class codes are mapped back to the class names through ``bundle``'s
    declaration (else the code meaning, which is the name for private codes).

    Returns ``{"probabilities": {class: p}, "thresholds": {class: t}, "predicted": [classes Present],
    "boxes": [{"label", "score", "malignancy" (or None), "polyline", "finding"}], "no_detections": bool,
    "volume_ml" / "area_cm2": float | None, "pixels" / "voxels": count | None (size without spacing),
    "structure": class name | None, "segment": (seg SOP Instance UID, segment number) | None,
    "algorithm": {"name", "version", "parameters"}, "intended_use": [meanings], "device_uid": str,
    "finding_sites": [(site, laterality)]}``."""
    import highdicom as hd

    sr = hd.sr.srread(path_or_dataset) if isinstance(path_or_dataset, str) else \
        hd.sr.Comprehensive3DSR.from_dataset(path_or_dataset)
    out: dict = {"probabilities": {}, "thresholds": {}, "predicted": [], "boxes": [], "no_detections": False,
                 "volume_ml": None, "area_cm2": None, "pixels": None, "voxels": None, "structure": None,
                 "segment": None, "algorithm": None, "intended_use": [], "device_uid": None, "finding_sites": []}
    report = sr.content
    observer = [it for it in report[0].ContentSequence if it.ConceptNameCodeSequence[0].CodeMeaning ==
                "Device Observer UID"]
    out["device_uid"] = observer[0].UID if observer else None
    name_of = lambda coded: dicom_codes.class_name_of(bundle, coded)  # noqa: E731

    def size(items: dict) -> None:
        for key, measure in (("Volume", "volume_ml"), ("Area", "area_cm2")):
            if key in items:
                unit = items[key][0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
                if unit in ("{pixels}", "{voxels}"):
                    out[unit.strip("{}")] = int(_value(items[key][0]))
                else:
                    out[measure] = _value(items[key][0])

    for g in report.get_image_measurement_groups():
        items = _read_common(g, out)
        ident = items["Tracking Identifier"][0].TextValue
        if ident == NO_DETECTIONS:
            out["no_detections"] = _presence_of(items) is False
        elif "Probability" in items and g.finding_type is not None:
            name = name_of(g.finding_type)
            out["probabilities"][name] = _value(items["Probability"][0])
            if "Threshold Value" in items:
                out["thresholds"][name] = _value(items["Threshold Value"][0])
            if _presence_of(items):
                out["predicted"].append(name)
        elif ident == "segment 1":
            out["structure"] = name_of(g.finding_type)
            size(items)
    for g in report.get_planar_roi_measurement_groups():
        items = _read_common(g, out)
        if g.roi is not None:  # a box
            pathology = items.get("Pathology")
            out["boxes"].append({
                "label": name_of(_coded(pathology[0])) if pathology else None, "finding": g.finding_type.meaning,
                "score": _value(items["Probability"][0]),
                "malignancy": _value(items["Probability of cancer"][0]) if "Probability of cancer" in items
                else None, "polyline": np.asarray(g.roi.value).tolist()})
        else:  # a segment of a 2D SEG
            out["structure"] = name_of(g.finding_type)
            size(items)
            seg = g[0].ContentSequence  # the SEG frame reference (see _frame_references_without_segment_number)
            ref = next(i for i in seg if i.ConceptNameCodeSequence[0].CodeMeaning == "Referenced Segmentation Frame")
            out["segment"] = (ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
                              int(ref.ReferencedSOPSequence[0].get("ReferencedSegmentNumber", 1)))
    for g in report.get_volumetric_roi_measurement_groups():
        items = _read_common(g, out)
        out["structure"] = name_of(g.finding_type)
        size(items)
        seg = g.referenced_segment
        out["segment"] = (seg.referenced_sop_instance_uid, int(seg.referenced_segment_numbers[0]))
    return out


def _coded(item):
    return dicom_codes.concept((item.ConceptCodeSequence[0].CodeValue if "CodeValue" in item.ConceptCodeSequence[0]
                                else item.ConceptCodeSequence[0].LongCodeValue,
                                item.ConceptCodeSequence[0].CodingSchemeDesignator,
                                item.ConceptCodeSequence[0].CodeMeaning))


def _presence_of(items: dict) -> bool | None:
    found = items.get("Presence of property")
    return None if not found else found[0].ConceptCodeSequence[0].CodeMeaning == "Present"


def _value(item) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def _read_common(group, out: dict) -> dict[str, list]:
    """The group's direct content items by concept name meaning; records algorithm and intended use in ``out``."""
    items: dict[str, list] = {}
    for item in group[0].ContentSequence:
        items.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item)
    if "Algorithm Name" in items:
        out["algorithm"] = {"name": items["Algorithm Name"][0].TextValue,
                            "version": items["Algorithm Version"][0].TextValue,
                            "parameters": [p.TextValue for p in items.get("Algorithm Parameters", [])]}
    out["intended_use"] += [it.ConceptCodeSequence[0].CodeMeaning for it in items.get(INTENDED_USE[1], [])]
    for site in items.get("Finding Site", []):
        side = [m.ConceptCodeSequence[0].CodeMeaning for m in getattr(site, "ContentSequence", [])
                if m.ConceptNameCodeSequence[0].CodeMeaning == "Laterality"]
        found = (site.ConceptCodeSequence[0].CodeMeaning, side[0] if side else None)
        if found not in out["finding_sites"]:
            out["finding_sites"].append(found)
    return items
