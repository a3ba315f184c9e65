"""utils.result_formats: the FHIR R4 Observation validated (no server), the DICOM SR read back with pydicom.

The FHIR schema is tests/fixtures/fhir_r4_observation_subset.schema.json: a hand-written subset of
the R4 Observation (its description says where it comes from), not the official fhir.schema.json,
which cannot be downloaded here. The resource is also parsed, strictly, by the R4 (4.0.1) models of
the fhirclient package, generated from the specification's StructureDefinitions.
"""

import copy
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fhirclient.models.fhirabstractbase import FHIRValidationError
from fhirclient.models.observation import Observation
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from utils import result_formats

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "fhir_r4_observation_subset.schema.json").read_text())
COMPUTED_RADIOGRAPHY = "1.2.840.10008.5.1.4.1.1.1"

READING = {  # the JSON reading of utils.predict for a girl of 10 years
    "file": "/data/hand.dcm", "bone_age_months": 130.5, "bone_age_years": 10.88, "bone_age_type": "greulich-pyle",
    "chronological_age_months": 120.0, "difference_months": 10.5, "reference_sd_months": 11.73,
    "bone_age_sds": 0.9, "bone_age_centile": 81.59, "category": "normal",
    "interval": {"low": 110.0, "high": 151.0, "coverage_pct": 90.0},
    "quality_flag": "ok", "quality_score": 0.4, "sex": "female", "sex_source": "DICOM PatientSex",
    "age_source": "DICOM header", "model": "/models/ci/bone_age.onnx",
}
WITHOUT_AGE = {key: value for key, value in READING.items()
               if key not in {"chronological_age_months", "difference_months", "reference_sd_months", "bone_age_sds",
                              "bone_age_centile", "category", "age_source"}}
REJECTED = {"file": "/data/hand.png", "bone_age_months": None, "rejected": True,
            "rejection_reason": "quality flag 'rotated': the hand looks turned by about 90 degrees",
            "quality_flag": "rotated", "quality_score": 2.7, "sex": "male", "model": "/models/ci/bone_age.onnx"}
IDENTIFIERS = {"StudyInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.3.4.5", "PatientID": "P123", "StudyDate": "20240105"}


def schema_errors(resource) -> list[str]:
    # jsonschema is imported where it is used: its format grammars take seconds to build, which
    # every test worker would pay at collection.
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(resource)]


def test_the_fixture_is_a_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert "NOT the official FHIR JSON schema" in SCHEMA["description"]


@pytest.mark.parametrize("reading, identifiers", [(READING, IDENTIFIERS), (READING, None), (WITHOUT_AGE, None),
                                                  (REJECTED, None)], ids=["dicom", "png", "no-age", "rejected"])
def test_observation_validates_against_the_schema_and_the_r4_models(reading, identifiers):
    observation = result_formats.fhir_observation(reading, identifiers)
    assert schema_errors(observation) == []
    parsed = Observation(json.loads(json.dumps(observation)), strict=True)  # raises FHIRValidationError
    assert parsed.code.coding[0].code == "37362-1" and parsed.code.coding[0].system == "http://loinc.org"


def test_observation_carries_the_value_interpretation_components_and_note():
    observation = result_formats.fhir_observation(READING, IDENTIFIERS, issued=datetime(2026, 1, 2, tzinfo=timezone.utc))
    assert observation["status"] == "preliminary" and observation["issued"] == "2026-01-02T00:00:00+00:00"
    assert observation["valueQuantity"] == {"value": 130.5, "unit": "month", "system": "http://unitsofmeasure.org",
                                            "code": "mo"}
    interpretation = observation["interpretation"][0]["coding"][0]
    assert (interpretation["system"], interpretation["code"]) == (result_formats.INTERPRETATION_SYSTEM, "N")
    components = {component["code"].get("text"): component for component in observation["component"]}
    assert components["chronological age"]["valueQuantity"]["value"] == 120.0
    sds = next(component for text, component in components.items() if "standard deviation score" in text)
    assert sds["valueQuantity"]["value"] == 0.9
    interval = components["90% prediction interval of the bone age"]["valueRange"]
    assert (interval["low"]["value"], interval["high"]["value"]) == (110.0, 151.0)
    normal = observation["referenceRange"][0]
    assert normal["low"]["value"] == pytest.approx(120 - 2 * 11.73) and normal["high"]["value"] == pytest.approx(143.46)
    assert "not for clinical decisions" in observation["note"][0]["text"]
    assert observation["derivedFrom"][0]["identifier"]["value"] == "urn:oid:1.2.3.4"
    assert observation["subject"]["identifier"]["value"] == "P123" and observation["effectiveDateTime"] == "2024-01-05"


@pytest.mark.parametrize(("category", "code"), [("delayed", "L"), ("normal", "N"), ("advanced", "H")])
def test_interpretation_codes(category, code):
    observation = result_formats.fhir_observation({**READING, "category": category})
    assert observation["interpretation"][0]["coding"][0]["code"] == code


def test_rejected_image_is_a_cancelled_observation_without_a_value():
    observation = result_formats.fhir_observation(REJECTED)
    assert observation["status"] == "cancelled" and "valueQuantity" not in observation
    assert observation["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert "rotated" in observation["dataAbsentReason"]["text"] and "rotated" in observation["note"][0]["text"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda resource: resource.pop("status"), "'status' is a required property"),
        (lambda resource: resource.update(status="done"), "status: 'done' is not one of"),
        (lambda resource: resource["valueQuantity"].update(code="a"), "valueQuantity/code: 'mo' was expected"),
        (lambda resource: resource["interpretation"][0]["coding"][0].update(code="A"), "code: 'A' is not one of"),
        (lambda resource: resource["note"][0].pop("text"), "'text' is a required property"),
        (lambda resource: resource.update(valueQuantiy={}), "Additional properties are not allowed"),
        (lambda resource: resource.update(issued="2026-01-02"), "issued: '2026-01-02' does not match"),
    ],
)
def test_the_schema_catches_what_it_should(change, message):
    observation = copy.deepcopy(result_formats.fhir_observation(READING))
    change(observation)
    assert any(message in error for error in schema_errors(observation)), schema_errors(observation)


def test_the_r4_models_refuse_an_unknown_element():
    observation = result_formats.fhir_observation(READING)
    with pytest.raises(FHIRValidationError, match="Superfluous entry"):
        Observation({**observation, "valueQuantiy": {"value": 1}}, strict=True)


def write_source_dicom(path: Path, **attributes) -> Path:
    """A small CR image with the identifiers a report references."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = COMPUTED_RADIOGRAPHY
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = COMPUTED_RADIOGRAPHY, meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.PatientID, dataset.PatientName, dataset.PatientSex, dataset.PatientAge = "P123", "Doe^Jane", "F", "010Y"
    dataset.StudyDate, dataset.Modality = "20240105", "CR"
    for name, value in attributes.items():
        setattr(dataset, name, value)
    pixels = np.zeros((16, 16), np.uint8)
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def content_items(dataset):
    """Every SR content item, depth first."""
    for item in getattr(dataset, "ContentSequence", []):
        yield item
        yield from content_items(item)


def numeric_values(sr) -> dict[str, tuple[float, str]]:
    """{concept code: (value, unit code)} of the NUM items of an SR."""
    return {
        item.ConceptNameCodeSequence[0].CodeValue: (
            float(item.MeasuredValueSequence[0].NumericValue),
            item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue,
        )
        for item in content_items(sr) if item.ValueType == "NUM"
    }


def test_dicom_sr_round_trip_keeps_the_identifiers_and_the_value(tmp_path):
    source_path = write_source_dicom(tmp_path / "hand.dcm")
    source = pydicom.dcmread(source_path)
    written = result_formats.write_dicom_sr(READING, source_path, tmp_path / "out")
    assert written == tmp_path / "out" / "hand_bone_age_sr.dcm"
    sr = pydicom.dcmread(written)
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sr.PatientID, str(sr.PatientName), sr.PatientSex) == ("P123", "Doe^Jane", "F")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (referenced.ReferencedSOPInstanceUID, referenced.ReferencedSOPClassUID) == (source.SOPInstanceUID, source.SOPClassUID)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    values = numeric_values(sr)
    assert values["37362-1"] == (130.5, "mo")
    assert values["30525-0"] == (120.0, "mo")
    assert values["BA-SDS"][0] == pytest.approx(0.9)
    assert (values["BA-PI-LOW"][0], values["BA-PI-HIGH"][0]) == (110.0, 151.0)
    categories = [item.ConceptCodeSequence[0].CodeValue for item in content_items(sr)
                  if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "BA-CATEGORY"]
    assert categories == ["NORMAL"]
    images = [item for item in content_items(sr) if item.ValueType == "IMAGE"]
    assert images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_dicom_sr_without_chronological_age_and_with_missing_type_2_attributes(tmp_path):
    source_path = write_source_dicom(tmp_path / "hand.dcm")
    source = pydicom.dcmread(source_path)
    del source.PatientName, source.StudyDate  # Type 2: the SR gets them empty
    sr = result_formats.dicom_sr(WITHOUT_AGE, source)
    assert set(numeric_values(sr)) == {"37362-1", "BA-PI-LOW", "BA-PI-HIGH"}
    assert str(sr.PatientName) == "" and sr.StudyInstanceUID == source.StudyInstanceUID


def test_dicom_sr_refuses_a_source_without_uids_and_a_reading_without_an_age(tmp_path):
    source = pydicom.dcmread(write_source_dicom(tmp_path / "hand.dcm"))
    with pytest.raises(ValueError, match="no bone age"):
        result_formats.dicom_sr(REJECTED, source)
    del source.StudyInstanceUID
    with pytest.raises(ValueError, match="lacks StudyInstanceUID"):
        result_formats.dicom_sr(READING, source)


def test_dicom_identifiers_of_dicom_and_other_files(tmp_path):
    source_path = write_source_dicom(tmp_path / "hand.dcm")
    identifiers = result_formats.dicom_identifiers(source_path)
    assert identifiers["PatientID"] == "P123" and identifiers["StudyDate"] == "20240105"
    (tmp_path / "hand.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert result_formats.dicom_identifiers(tmp_path / "hand.png") is None


def test_a_flagged_image_keeps_its_value_without_an_interpretation():
    withheld = {**READING, "quality_flag": "unusual", "difference_months": None, "bone_age_sds": None,
                "bone_age_centile": None, "category": None, "clinical_reading_withheld": "quality flag 'unusual': ..."}
    observation = result_formats.fhir_observation(withheld)
    assert schema_errors(observation) == []
    assert observation["valueQuantity"]["value"] == 130.5 and "interpretation" not in observation
    assert "No interpretation: quality flag 'unusual'" in observation["note"][0]["text"]
