"""A unit's findings as a DICOM Structured Report: a highdicom TID 1500 Measurement Report.

What the report holds (every measurement group carries the algorithm identification: bundle name, bundle version
and ``model_sha256=<hex>`` as its parameter):

- classification: one image-level group per class (finding type = the class, measurement ``Probability`` in
  UCUM ``1``) and one group ``prediction`` whose ``Finding`` evaluation names the predicted class(es);
- detection: one planar ROI group per box, the box as a closed SCOORD ``POLYLINE`` on the source image (pixel
  column, row), finding type = the box label, measurement ``Probability`` = the score; no box at all: one
  image-level group ``no detections`` whose ``Finding`` evaluation is ``Absent`` (DCM 121054) (TID 1500 needs at
  least one group, and "nothing found" is a result too);
- segmentation: one volumetric ROI group referencing segment 1 of the DICOM SEG, measurement ``Volume`` in mL
  (``Area`` in cm² for a 2D image); no group when there is no SEG to refer to.

Class names are coded in the private scheme ``99CADPIPE`` (value = meaning = the bundle's class name). Every
group also has the evaluation ``Intended use`` = ``Not for clinical use``, the series description says so and
ContentQualification is ``RESEARCH``. All results reference the source study (same Study Instance UID, a new
series).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["build_measurement_report", "CADPIPE_SCHEME", "NOT_FOR_CLINICAL_USE", "class_code", "read_report"]

CADPIPE_SCHEME = "99CADPIPE"
SERIES_DESCRIPTION = "cadpipe findings (not for clinical use)"


def _code(value: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value=value[:16], scheme_designator=CADPIPE_SCHEME, meaning=meaning[:64])


def class_code(name: str):
    """The coded concept of a bundle class name (scheme ``99CADPIPE``)."""
    return _code(str(name), str(name))


INTENDED_USE = ("USE", "Intended use")
NO_DETECTIONS = "no detections"  # tracking identifier of the group of a detection without any box
NOT_FOR_CLINICAL_USE = ("NFCU", "Not for clinical use")


def _algorithm(bundle: dict):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name=str(bundle.get("name") or "cadpipe")[:64],
                                         version=str(bundle.get("version") or "0")[:64],
                                         parameters=[f"model_sha256={bundle.get('model_sha256') or 'unknown'}"])


def _intended_use():
    import highdicom as hd

    return hd.sr.QualitativeEvaluation(name=_code(*INTENDED_USE), value=_code(*NOT_FOR_CLINICAL_USE))


def build_measurement_report(sources: Sequence, bundle: dict, *, probabilities: dict[str, float] | None = None,
                             predicted: Sequence[str] = (), boxes: Sequence[dict] | None = None,
                             volume_ml: float | None = None, area_cm2: float | None = None, segmentation=None,
                             series_number: int = 9902):
    """A Comprehensive 3D SR (TID 1500) for one scored unit; see the module docstring for its content.

    Args:
        sources: the unit's source instances (pydicom datasets; headers suffice). The first one is the image the
            image-level groups and boxes refer to.
        bundle: ``name``, ``version``, ``model_sha256`` of the bundle that produced the findings.
        probabilities: class name -> probability (classification / multi-label).
        predicted: the predicted class names (classification: one; multi-label: those >= 0.5, maybe none).
        boxes: detection boxes ``{"box": [col_min, row_min, col_max, row_max], "label": str, "score": float}`` in
            the source image's pixel grid.
        volume_ml: segmentation volume in mL (a volume), or ``area_cm2``: its area in cm² (a 2D image); with
            ``segmentation`` (the SEG dataset) whose segment 1 it refers to.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = _algorithm(bundle)
    ref = sources[0]
    src_group = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ref)]
    groups = []
    if probabilities:
        for i, (name, p) in enumerate(probabilities.items(), start=1):
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"class {i}: {name}"[:64]),
                finding_type=class_code(name), algorithm_id=algo, source_images=src_group,
                measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=float(p), unit=codes.UCUM.NoUnits,
                                                algorithm_id=algo)],
                qualitative_evaluations=[_intended_use()]))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="prediction"),
            algorithm_id=algo, source_images=src_group,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=class_code(n))
                                     for n in predicted] + [_intended_use()]))
    if boxes is not None and len(boxes) == 0:  # a detection without any box: say so
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=NO_DETECTIONS),
            algorithm_id=algo, source_images=src_group,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=codes.DCM.Absent),
                                     _intended_use()]))
    for i, b in enumerate(boxes or [], start=1):
        c0, r0, c1, r1 = (max(0.0, float(v)) for v in b["box"])
        polyline = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float)
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
                                   source_image=hd.sr.SourceImageForRegion.from_source_image(ref))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"box {i}"),
            referenced_region=region, finding_type=class_code(str(b["label"])), algorithm_id=algo,
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=float(b["score"]),
                                            unit=codes.UCUM.NoUnits, algorithm_id=algo)],
            qualitative_evaluations=[_intended_use()]))
    if volume_ml is not None or area_cm2 is not None:
        if segmentation is None:
            raise ValueError("a segmentation volume or area needs the DICOM SEG it refers to")
        size = hd.sr.Measurement(name=codes.SCT.Volume, value=float(volume_ml),
                                 unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"), algorithm_id=algo) \
            if volume_ml is not None else \
            hd.sr.Measurement(name=codes.SCT.Area, value=float(area_cm2), unit=codes.UCUM.SquareCentimeter,
                              algorithm_id=algo)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="segment 1"),
            # built from the sources, not ReferencedSegment.from_segmentation: that one needs the segment in
            # per-frame functional groups, and highdicom writes a one-segment SEG's into the shared ones
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=1,
                source_images=[hd.sr.SourceImageForSegmentation.from_source_image(s) for s in sources]),
            finding_type=codes.SCT.Lesion, algorithm_id=algo,
            measurements=[size],
            qualitative_evaluations=[_intended_use()]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="cadpipe", model_name=str(bundle.get("name") or "cadpipe")[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    evidence = list(sources) + ([segmentation] if segmentation is not None else [])
    return hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="cadpipe", is_complete=True,
        series_description=SERIES_DESCRIPTION, content_qualification="RESEARCH")


def read_report(path_or_dataset) -> dict:
    """Parse a report written by :func:`build_measurement_report` back (through highdicom's own SR parser, which
    validates the TID 1500 structure): ``{"probabilities": {class: p}, "predicted": [..], "boxes": [{"label",
    "score", "polyline"}], "no_detections": bool, "volume_ml" / "area_cm2": float | None, "segment": (seg SOP
    Instance UID, segment number) | None, "algorithm": {"name", "version", "parameters"}, "intended_use":
    [meanings]}``. ``no_detections``: the report says a detection found no box (its ``no detections`` group)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sr = hd.sr.srread(path_or_dataset) if isinstance(path_or_dataset, str) else \
        hd.sr.Comprehensive3DSR.from_dataset(path_or_dataset)
    out: dict = {"probabilities": {}, "predicted": [], "boxes": [], "no_detections": False, "volume_ml": None,
                 "area_cm2": None, "segment": None,
                 "algorithm": None, "intended_use": []}
    report = sr.content
    for g in report.get_image_measurement_groups():
        items = _read_common(g, out)
        if "Probability" in items and g.finding_type is not None:
            out["probabilities"][g.finding_type.meaning] = _number(items["Probability"][0])
        if items["Tracking Identifier"][0].TextValue == "prediction":  # the class groups' Finding = finding type
            out["predicted"] += [it.ConceptCodeSequence[0].CodeMeaning for it in items.get("Finding", [])]
        if items["Tracking Identifier"][0].TextValue == NO_DETECTIONS:
            out["no_detections"] = [it.ConceptCodeSequence[0].CodeMeaning for it in items.get("Finding", [])] == [
                "Absent"]
    for g in report.get_planar_roi_measurement_groups():
        items = _read_common(g, out)
        out["boxes"].append({"label": g.finding_type.meaning, "score": _number(items["Probability"][0]),
                             "polyline": np.asarray(g.roi.value).tolist()})
    for g in report.get_volumetric_roi_measurement_groups():
        items = _read_common(g, out)
        if "Volume" in items:
            out["volume_ml"] = _number(items["Volume"][0])
        if "Area" in items:
            out["area_cm2"] = _number(items["Area"][0])
        seg = g.referenced_segment
        out["segment"] = (seg.referenced_sop_instance_uid, int(seg.referenced_segment_numbers[0]))
    return out


def _number(item) -> float:
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
    return items
