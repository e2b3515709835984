"""Patient and study header in human form."""

from cadpipe.pipelines.outputs.patient_header import age, patient_lines, person_name, study_date, technical_lines


def test_values_in_human_form():
    assert person_name("DOE^JANE^M^^") == "DOE, JANE M" and person_name("Smith") == "Smith"
    assert study_date("20240131") == "31 Jan 2024" and study_date("unknown") == "unknown"
    assert age("045Y") == "45 years" and age("001Y") == "1 year" and age("006M") == "6 months"
    assert age("", "19800615", "20240614") == "43 years" and age("", "", "20240101") == ""


def test_header_lines_leave_out_uids_and_empty_values():
    info = {"PatientName": "DOE^JANE", "PatientID": "P1", "PatientSex": "F", "PatientAge": "045Y",
            "StudyDate": "20240131", "Modality": "MG", "BodyPartExamined": "BREAST", "ViewPosition": "CC",
            "ImageLaterality": "L", "AccessionNumber": "A7", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.4"}
    lines = dict(patient_lines(info))
    assert lines == {"Patient name": "DOE, JANE", "Patient ID": "P1", "Sex": "Female", "Age": "45 years",
                     "Study date": "31 Jan 2024", "Modality": "Mammography (MG)", "Body part": "Breast",
                     "View": "Left CC", "Accession": "A7"}
    assert dict(patient_lines({"BreastDensity": "3"}))["Breast density"] == "ACR 3 (heterogeneously dense)"
    assert technical_lines(info) == [("Study Instance UID", "1.2.3"), ("Series Instance UID", "1.2.4")]
