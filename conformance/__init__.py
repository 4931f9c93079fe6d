"""Tables derived from the DICOM standard, status codes, object validation."""
