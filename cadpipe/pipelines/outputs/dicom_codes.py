"""What a bundle declares about its DICOM results: the coded concepts of its classes, its series numbers and
series descriptions, and the stable identity of its model as a DICOM device.

The declaration lives in the bundle, in ``configs/metadata.json``'s ``"cadpipe"`` object::

    "dicom": {
      "series_number": 9910,              # SEG = 9911, SR = 9912, Secondary Capture = 9913
      "series_label": "CXR pneumonia",    # in every series description (at most 20 characters)
      "finding": {"type": ["4147007", "SCT", "Mass"]},            # what a detection box is (detection only)
      "classes": {"PNEUMONIA": {"type": ["233604007", "SCT", "Pneumonia"]},
                  "lung": {"category": ["91723000", "SCT", "Anatomical Structure"],
                           "type": ["39607008", "SCT", "Lung"]}}
    }

Each code is ``[code value, coding scheme designator, code meaning]`` (highdicom's ``CodedConcept`` order).
Standard codes (SNOMED CT ``SCT``, DICOM ``DCM``, RadLex ``RADLEX``) where one exists; a class without a
declared code gets a private one in the scheme ``99CADPIPE`` whose value and meaning are the class name, never
truncated (values longer than 16 characters go into Long Code Value, as DICOM requires). A bundle without any
declaration still gets valid results: private codes, and series numbers derived from its name.
"""

from __future__ import annotations

import zlib

__all__ = ["PRIVATE_SCHEME", "NOT_FOR_CLINICAL_USE", "concept", "class_type", "class_category", "box_finding",
           "class_name_of", "series_number", "series_description", "device_uid", "is_result_description",
           "has_pixel_spacing"]

PRIVATE_SCHEME = "99CADPIPE"
NOT_FOR_CLINICAL_USE = "(not for clinical use)"
_OFFSET = {"seg": 1, "sr": 2, "sc": 3}
_WORD = {"seg": "SEG", "sr": "SR", "sc": "overlay"}
# segmentation of an undeclared class: a morphologically abnormal structure (what a lesion bundle finds)
_DEFAULT_CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")


def _declared(bundle: dict | None) -> dict:
    return dict((bundle or {}).get("dicom") or {})


def concept(code):
    """``[value, scheme, meaning]`` (or a highdicom/pydicom code) as a highdicom ``CodedConcept``."""
    import highdicom as hd

    if isinstance(code, hd.sr.CodedConcept):
        return code
    if hasattr(code, "scheme_designator"):  # pydicom Code
        return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)
    value, scheme, meaning = code
    return hd.sr.CodedConcept(value=str(value), scheme_designator=str(scheme), meaning=str(meaning)[:64])


def _private(name: str):
    return concept((str(name), PRIVATE_SCHEME, str(name)))


def class_type(bundle: dict | None, name: str):
    """The coded concept of class ``name``: the bundle's declared ``type``, else a private ``99CADPIPE`` code."""
    entry = _declared(bundle).get("classes", {}).get(str(name)) or {}
    return concept(entry["type"]) if entry.get("type") else _private(name)


def class_category(bundle: dict | None, name: str):
    """The segmented property category of class ``name`` (declared, else Morphologically Abnormal Structure)."""
    entry = _declared(bundle).get("classes", {}).get(str(name)) or {}
    return concept(entry.get("category") or _DEFAULT_CATEGORY)


def box_finding(bundle: dict | None):
    """What a detection box is (the declared ``finding`` type, else a private ``finding`` code)."""
    entry = _declared(bundle).get("finding") or {}
    return concept(entry["type"]) if entry.get("type") else _private("finding")


def class_name_of(bundle: dict | None, coded) -> str:
    """Back from a coded concept to the bundle's class name (declared codes), else the code meaning."""
    for name, entry in _declared(bundle).get("classes", {}).items():
        t = entry.get("type")
        if t and str(t[0]) == coded.value and str(t[1]) == coded.scheme_designator:
            return name
    return coded.meaning


def _base(bundle: dict | None) -> int:
    declared = _declared(bundle).get("series_number")
    if declared is not None:
        return int(declared)
    name = str((bundle or {}).get("name") or "cadpipe")
    return 9000 + 10 * (zlib.crc32(name.encode("utf-8")) % 90)  # 9000..9890, the same for every run


def series_number(bundle: dict | None, kind: str) -> int:
    """Series number of the bundle's ``kind`` (``"seg"``, ``"sr"``, ``"sc"``) results."""
    return _base(bundle) + _OFFSET[kind]


def _label(bundle: dict | None) -> str:
    label = _declared(bundle).get("series_label") or str((bundle or {}).get("name") or "")
    return " ".join(label.split())[:20].strip()


def series_description(bundle: dict | None, kind: str) -> str:
    """``"cadpipe <label> <SEG|SR|overlay> (not for clinical use)"``, at most 64 characters."""
    label = _label(bundle)
    return " ".join(p for p in ("cadpipe", label, _WORD[kind], NOT_FOR_CLINICAL_USE) if p)[:64]


def is_result_description(description: str) -> bool:
    """True for a series description :func:`series_description` wrote (any bundle)."""
    d = str(description or "").strip()
    return d.startswith("cadpipe ") and d.endswith(NOT_FOR_CLINICAL_USE)


def device_uid(bundle: dict | None) -> str:
    """The Device Observer UID of the bundle's model: derived from the weights' sha256 (same weights, same UID;
    new weights, new UID); from name and version when the sha256 is unknown."""
    import uuid

    b = bundle or {}
    key = b.get("model_sha256") or f"{b.get('name')}|{b.get('version')}"
    # a name-based (version 5) UUID as a UID under the 2.25 arc (PS3.5 B.2): no registered root needed
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'urn:cadpipe:device-observer:{key}').int}"


def has_pixel_spacing(ds) -> bool:
    """True when the header gives a usable (non-zero) pixel spacing: PixelSpacing, ImagerPixelSpacing, or the
    Pixel Measures of an enhanced multi-frame header's functional groups."""
    values = None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if ds.get(keyword):
            values = ds.get(keyword)
            break
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if values is None:
            try:
                values = ds[groups][0].PixelMeasuresSequence[0].PixelSpacing
            except (AttributeError, IndexError, KeyError):
                pass
    if values is None:
        return False
    try:
        return len(values) == 2 and all(float(v) > 0 for v in values)
    except (TypeError, ValueError):
        return False
