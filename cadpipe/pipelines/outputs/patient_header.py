"""The report's patient and study header in human form, from DICOM attribute values.

``patient_lines(info)`` turns the identifiers discovery reads from a DICOM header (``PatientName`` ``DOE^JANE``,
``StudyDate`` ``20240131``, ``PatientAge`` ``045Y``...) into what a reader expects ("DOE, Jane", "31 Jan 2024",
"45 years"; ``BreastDensity``, not a DICOM attribute, is the density a DDSM ``.ics`` gives, "ACR 3 (heterogeneously
dense)"); ``technical_lines(info)`` keeps the UIDs for the report's small technical-details section. Missing
values are left out; a value that does not parse is shown as it is (never guessed).
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["person_name", "study_date", "age", "patient_lines", "technical_lines", "view_text", "density_text"]

_SEX = {"M": "Male", "F": "Female", "O": "Other"}
_AGE_UNITS = {"Y": "year", "M": "month", "W": "week", "D": "day"}
_MODALITY = {"CR": "Radiograph (CR)", "DX": "Radiograph (DX)", "MG": "Mammography (MG)", "MR": "MRI (MR)",
             "CT": "CT", "SM": "Slide microscopy (SM)", "US": "Ultrasound (US)", "XC": "Photograph (XC)"}
_LATERALITY = {"L": "left", "R": "right", "B": "both"}


def person_name(value: str) -> str:
    """DICOM PN ``Family^Given^Middle^Prefix^Suffix`` → ``"Family, Given Middle"``."""
    parts = [p.strip() for p in str(value or "").split("=")[0].split("^")]
    parts += [""] * (5 - len(parts))
    family, given, middle, prefix, suffix = parts[:5]
    first = " ".join(p for p in (prefix, given, middle) if p)
    name = f"{family}, {first}" if family and first else family or first
    return f"{name} {suffix}".strip() if suffix else name


def study_date(value: str) -> str:
    """DICOM DA ``YYYYMMDD`` → ``"31 Jan 2024"`` (unambiguous in every locale); other text unchanged."""
    v = str(value or "").strip().replace("-", "").replace(".", "")
    try:
        return _dt.datetime.strptime(v, "%Y%m%d").strftime("%d %b %Y").lstrip("0")
    except ValueError:
        return str(value or "").strip()


def age(value: str, birth_date: str = "", on_date: str = "") -> str:
    """DICOM AS ``045Y`` → ``"45 years"``; without it, the age computed from the birth and study dates."""
    v = str(value or "").strip().upper()
    if len(v) == 4 and v[:3].isdigit() and v[3] in _AGE_UNITS:
        n = int(v[:3])
        return f"{n} {_AGE_UNITS[v[3]]}{'' if n == 1 else 's'}"
    if v:
        return str(value).strip()
    try:
        born = _dt.datetime.strptime(str(birth_date).strip(), "%Y%m%d").date()
        seen = _dt.datetime.strptime(str(on_date).strip(), "%Y%m%d").date()
    except ValueError:
        return ""
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return f"{years} years" if years >= 0 else ""


def view_text(info: dict) -> str:
    """Laterality and view as a reader says them, e.g. ``"Left CC"``, ``"Right MLO"`` or ``"PA"``."""
    view = str(info.get("ViewPosition", "") or "").strip()
    side = str(info.get("ImageLaterality", "") or info.get("Laterality", "") or "").strip().upper()
    side = _LATERALITY.get(side, side.lower())
    return " ".join(p for p in (side.capitalize(), view) if p)


def density_text(value) -> str:
    """Breast density (ACR BI-RADS category 1-4, as DDSM's ``.ics`` ``DENSITY`` gives it) in words."""
    words = {"1": "almost entirely fatty", "2": "scattered fibroglandular densities",
             "3": "heterogeneously dense", "4": "extremely dense"}
    v = str(value if value is not None else "").strip()
    return f"ACR {v} ({words[v]})" if v in words else v


def patient_lines(info: dict) -> list[tuple[str, str]]:
    """``[(label, value)]`` for the report header, empty values left out."""
    modality = str(info.get("Modality", "") or "").strip().upper()
    sex = str(info.get("PatientSex", "") or "").strip().upper()
    lines = [
        ("Patient name", person_name(info.get("PatientName", ""))),
        ("Patient ID", str(info.get("PatientID", "") or "").strip()),
        ("Sex", _SEX.get(sex, sex)),
        ("Age", age(info.get("PatientAge", ""), info.get("PatientBirthDate", ""), info.get("StudyDate", ""))),
        ("Study date", study_date(info.get("StudyDate", ""))),
        ("Study", str(info.get("StudyDescription", "") or "").strip()),
        ("Modality", _MODALITY.get(modality, modality)),
        ("Body part", str(info.get("BodyPartExamined", "") or "").strip().capitalize()),
        ("View", view_text(info)),
        ("Breast density", density_text(info.get("BreastDensity"))),
        ("Accession", str(info.get("AccessionNumber", "") or "").strip()),
    ]
    return [(k, v) for k, v in lines if v]


def technical_lines(info: dict) -> list[tuple[str, str]]:
    """The UIDs (study, series, instance) for the technical-details section."""
    keys = (("Study Instance UID", "StudyInstanceUID"), ("Series Instance UID", "SeriesInstanceUID"),
            ("SOP Instance UID", "SOPInstanceUID"))
    return [(label, str(info[k])) for label, k in keys if info.get(k)]
