"""The reading of one radiograph in the formats hospital systems take: a FHIR R4 Observation and a
DICOM Structured Report.

Both are made from the JSON reading of `utils.predict.predict_file` (bone_age_months, interval,
and with the chronological age the readout of `utils.clinical`), so the numbers are the same in
every format.

FHIR R4 Observation (`fhir_observation`), as `python -m utils.predict IMAGE --format fhir` prints it:
- status "preliminary" (research output, never verified by a reader); category "imaging";
  code LOINC 37362-1 (bone age by X-ray); bodySite SNOMED CT 85151006 (left hand);
- valueQuantity: the bone age in months, UCUM "mo";
- with the chronological age: interpretation (v3 ObservationInterpretation L / N / H for
  delayed / normal / advanced), referenceRange (the normal range, age ± 2 SD), and components for
  the chronological age (LOINC 30525-0), the SDS and the centile;
- always a component for the prediction interval (valueRange), one for the quality flag, and a
  note saying that this is research output;
- a rejected image (--reject-flagged) gives status "cancelled", no value, dataAbsentReason "error"
  and the reason in the note;
- for DICOM input, the subject (PatientID), effectiveDateTime (StudyDate) and derivedFrom the
  ImagingStudy (StudyInstanceUID as urn:oid).
Codes with no standard code (SDS, centile, interval, quality flag) carry text only, no made-up
code system. The test validates the resource against a JSON Schema of the parts of the R4
Observation emitted here (tests/fixtures/fhir_r4_observation_subset.schema.json) and parses it
with the R4 (4.0.1) resource models of the fhirclient package.

DICOM Comprehensive SR (`write_dicom_sr`), as `--dicom-out DIR` writes it for a DICOM input, made
with highdicom: TID 1500 Measurement Report in the source study (same Study Instance UID, patient
and study attributes copied from the source), the source image as evidence and as the source of
the measurement group, the algorithm identified (TID 4019), and NUM items for bone age (LOINC
37362-1, UCUM mo), the interval limits and, with the chronological age, the age (LOINC 30525-0),
the SDS and the category (a qualitative evaluation). Codes without a standard code use the
private coding scheme "99BONEAGE" (BA-PI-LOW, BA-PI-HIGH, BA-SDS, BA-CATEGORY with DELAYED, NORMAL,
ADVANCED).
"""

from __future__ import annotations

import copy
import html
import uuid
from datetime import datetime, timezone
from pathlib import Path

from utils import clinical
from utils.files import atomic_path

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
REFERENCE_RANGE_SYSTEM = "http://terminology.hl7.org/CodeSystem/referencerange-meaning"
BONE_AGE_LOINC = ("37362-1", "Bones X-ray bone age")  # the display of the HSPC bone-age profile
AGE_LOINC = ("30525-0", "Age")
LEFT_HAND_SNOMED = ("85151006", "Structure of left hand")
# delayed / normal / advanced as v3 ObservationInterpretation codes (below / within / above the normal range).
INTERPRETATION = {"delayed": ("L", "Low"), "normal": ("N", "Normal"), "advanced": ("H", "High")}
PRIVATE_SCHEME = "99BONEAGE"
RESEARCH_NOTE = (
    "Research output of the bone-age project's model (Greulich & Pyle scale; reference SDs of the Brush "
    "Foundation study). Not a medical device; not for clinical decisions. The interval is the model's "
    "conformal prediction interval."
)
SR_FILE_SUFFIX = "_bone_age_sr.dcm"
# Patient and study attributes an SR copies from its source: Type 2 (present, possibly empty).
TYPE_2_ATTRIBUTES = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                     "StudyDate", "StudyTime", "ReferringPhysicianName")


def _months(value: float) -> dict:
    return {"value": value, "unit": "month", "system": UCUM, "code": "mo"}


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict:
    concept = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        concept["text"] = text
    return concept


def dicom_identifiers(path) -> dict | None:
    """The identifiers of a DICOM file a report refers to (StudyInstanceUID, SeriesInstanceUID,
    SOPInstanceUID, SOPClassUID, PatientID, StudyDate; absent ones omitted), or None for a file
    that is not DICOM."""
    from pydicom import dcmread

    path = Path(path)
    try:
        header = dcmread(path, stop_before_pixels=True, force=path.suffix.lower() == ".dcm")
    except Exception:  # not DICOM (pydicom raises many types)
        return None
    if "SOPClassUID" not in header and "StudyInstanceUID" not in header:
        return None
    names = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientID", "StudyDate")
    return {name: str(header.get(name)) for name in names if str(header.get(name, "") or "").strip()}


def fhir_observation(reading: dict, identifiers: dict | None = None, issued: datetime | None = None) -> dict:
    """The FHIR R4 Observation of one reading (see the module docstring); `identifiers` are the
    source's `dicom_identifiers`."""
    issued = issued or datetime.now(timezone.utc)
    identifiers = identifiers or {}
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"}],
        "status": "preliminary",
        "category": [_concept(CATEGORY_SYSTEM, "imaging", "Imaging")],
        "code": _concept(LOINC, *BONE_AGE_LOINC, text="Bone age (Greulich & Pyle scale), estimated by software"),
    }
    if "PatientID" in identifiers:
        observation["subject"] = {"identifier": {"value": identifiers["PatientID"]}, "display": "the patient of the source study"}
    if len(identifiers.get("StudyDate", "")) == 8 and identifiers["StudyDate"].isdigit():
        date = identifiers["StudyDate"]
        observation["effectiveDateTime"] = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    observation["issued"] = issued.astimezone(timezone.utc).isoformat(timespec="seconds")
    bone_age = reading.get("bone_age_months")
    category = reading.get("category")
    if bone_age is None:
        reason = reading.get("rejection_reason") or "no bone age was estimated"
        observation["status"] = "cancelled"
        observation["dataAbsentReason"] = _concept(DATA_ABSENT_SYSTEM, "error", "Error", text=reason)
    else:
        observation["valueQuantity"] = _months(bone_age)
        if category in INTERPRETATION:
            code, display = INTERPRETATION[category]
            observation["interpretation"] = [_concept(INTERPRETATION_SYSTEM, code, display, text=category)]
    note = RESEARCH_NOTE if bone_age is not None else f"{RESEARCH_NOTE} No age: {reason}."
    if reading.get("clinical_reading_withheld"):  # a flagged image: its value stands, its interpretation does not
        note += f" No interpretation: {reading['clinical_reading_withheld']}."
    observation["note"] = [{"text": note}]
    observation["bodySite"] = _concept(SNOMED, *LEFT_HAND_SNOMED)
    observation["method"] = {"text": "convolutional network on the radiograph and the sex (bone-age research model)"}
    observation["device"] = {"display": f"bone-age research model {reading.get('model', '')}".strip()}
    if "StudyInstanceUID" in identifiers:
        observation["derivedFrom"] = [{
            "type": "ImagingStudy",
            "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{identifiers['StudyInstanceUID']}"},
        }]
    if bone_age is not None and "reference_sd_months" in reading:
        age, spread = reading["chronological_age_months"], clinical.NORMAL_RANGE_SD * reading["reference_sd_months"]
        observation["referenceRange"] = [{
            "low": _months(round(age - spread, 2)),
            "high": _months(round(age + spread, 2)),
            "type": _concept(REFERENCE_RANGE_SYSTEM, "normal", "Normal Range"),
            "text": f"chronological age ± {clinical.NORMAL_RANGE_SD:g} SD of skeletal age for age and sex "
                    "(Greulich & Pyle, Brush Foundation SDs)",
        }]
    observation["component"] = _components(reading)
    observation["text"] = {"status": "generated", "div": _narrative(reading)}
    return observation


def _components(reading: dict) -> list[dict]:
    components = []
    if reading.get("chronological_age_months") is not None:
        components.append({"code": _concept(LOINC, *AGE_LOINC, text="chronological age"),
                           "valueQuantity": _months(reading["chronological_age_months"])})
    if reading.get("bone_age_sds") is not None:
        components.append({"code": {"text": "bone age standard deviation score, (bone age - age) / SD (bone_age_sds)"},
                           "valueQuantity": {"value": reading["bone_age_sds"], "unit": "SD", "system": UCUM, "code": "{SD}"}})
        components.append({"code": {"text": "bone age centile (bone_age_centile)"},
                           "valueQuantity": {"value": reading["bone_age_centile"], "unit": "%", "system": UCUM, "code": "%"}})
    interval = reading.get("interval")
    if interval:
        components.append({"code": {"text": f"{interval['coverage_pct']:g}% prediction interval of the bone age"},
                           "valueRange": {"low": _months(interval["low"]), "high": _months(interval["high"])}})
    if reading.get("quality_flag"):
        components.append({"code": {"text": "image quality flag (ok, blank, inverted, rotated, unusual)"},
                           "valueString": str(reading["quality_flag"])})
    return components


def _narrative(reading: dict) -> str:
    if reading.get("bone_age_months") is None:
        text = f"No bone age: {reading.get('rejection_reason') or 'not estimated'}."
    else:
        text = f"Bone age {reading['bone_age_months']:.1f} months"
        if reading.get("interval"):
            interval = reading["interval"]
            text += f" ({interval['coverage_pct']:g}% interval {interval['low']:.1f} to {interval['high']:.1f})"
        if reading.get("bone_age_sds") is not None:
            text += (f" at a chronological age of {reading['chronological_age_months']:.1f} months: SDS "
                     f"{reading['bone_age_sds']:+.2f}, {reading['category']}")
        text += "."
    return (f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text)}</p>'
            f"<p>{html.escape(RESEARCH_NOTE)}</p></div>")


def _code(value: str, scheme: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def dicom_sr(reading: dict, source, software_version: str = "1"):
    """The Comprehensive SR (pydicom Dataset) of a reading of the DICOM dataset `source`
    (see the module docstring). ValueError when the source lacks the UIDs a reference needs."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    missing = [name for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if name not in source]
    if missing:
        raise ValueError(f"the source DICOM lacks {', '.join(missing)}: a report cannot reference it")
    if reading.get("bone_age_months") is None:
        raise ValueError("no bone age to report")
    source = copy.deepcopy(source)
    for name in TYPE_2_ATTRIBUTES:  # required but may be empty: a source that omits one gets it empty
        if name not in source:
            setattr(source, name, "")
    months = _code("mo", "UCUM", "month")
    algorithm = hd.sr.AlgorithmIdentification(name="bone-age research model", family=codes.cid7162.ArtificialIntelligence,
                                              version=str(software_version))
    hand = hd.sr.FindingSite(anatomic_location=_code(LEFT_HAND_SNOMED[0], "SCT", LEFT_HAND_SNOMED[1]))
    measurements = [hd.sr.Measurement(name=_code(BONE_AGE_LOINC[0], "LN", "Bone age"), value=reading["bone_age_months"],
                                      unit=months, algorithm_id=algorithm, finding_sites=[hand])]
    interval = reading.get("interval") or {}
    for key, code, meaning in (("low", "BA-PI-LOW", "Bone age, lower limit of prediction interval"),
                               ("high", "BA-PI-HIGH", "Bone age, upper limit of prediction interval")):
        if key in interval:
            meaning = f"{meaning} ({interval['coverage_pct']:g}%)"
            measurements.append(hd.sr.Measurement(name=_code(code, PRIVATE_SCHEME, meaning),
                                                  value=interval[key], unit=months, algorithm_id=algorithm))
    evaluations = []
    if reading.get("bone_age_sds") is not None:
        measurements.append(hd.sr.Measurement(name=_code(AGE_LOINC[0], "LN", "Age"),
                                              value=reading["chronological_age_months"], unit=months))
        measurements.append(hd.sr.Measurement(name=_code("BA-SDS", PRIVATE_SCHEME, "Bone age SDS"),
                                              value=reading["bone_age_sds"], unit=_code("{SD}", "UCUM", "standard deviation"),
                                              algorithm_id=algorithm))
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=_code("BA-CATEGORY", PRIVATE_SCHEME, "Bone age category"),
            value=_code(reading["category"].upper(), PRIVATE_SCHEME, reading["category"].capitalize()),
        ))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="bone age"),
        algorithm_id=algorithm,
        finding_sites=[hand],
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="bone-age research model", model_name=str(reading.get("model", ""))[-64:] or None),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_code(BONE_AGE_LOINC[0], "LN", "Bone age"),
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="bone-age research software",
        is_complete=True, is_final=False, is_verified=False,
    )
    sr.SeriesDescription = "Bone age (research software, not for clinical decisions)"
    return sr


def write_dicom_sr(reading: dict, source_path, folder) -> Path:
    """Write the SR of a reading of the DICOM file `source_path` to `folder`/<stem>_bone_age_sr.dcm."""
    from pydicom import dcmread

    source_path = Path(source_path)
    source = dcmread(source_path, stop_before_pixels=True, force=source_path.suffix.lower() == ".dcm")
    sr = dicom_sr(reading, source)
    destination = Path(folder) / f"{source_path.stem}{SR_FILE_SUFFIX}"
    with atomic_path(destination) as temporary:
        sr.save_as(temporary, enforce_file_format=True)
    return destination
