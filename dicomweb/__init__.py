"""DICOMweb services (PS3.18): STOW-RS, QIDO-RS, WADO-RS; media types, multipart, DICOM JSON/XML."""
