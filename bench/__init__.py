"""arca's reproducible benchmark, side by side with Orthanc (``python -m bench.run``)."""
