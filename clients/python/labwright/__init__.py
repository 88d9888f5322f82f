"""Labwright's Python client: check, price and submit protocols to a Labwright lab, follow
runs, and read results as pandas DataFrames.

    from labwright import Lab
    lab = Lab("http://lab.example:50051", token)
    run = lab.submit("serial-dilution.yaml").wait()
    df = run.results()          # one row per well and wavelength, with the plate map
    run.plate(0)                # the first read as the plate looks
"""

from .client import (
    RESULT_COLUMNS,
    Diagnostic,
    Lab,
    LabwrightError,
    ProtocolError,
    Quote,
    Run,
    RunFailed,
    Validation,
)
from .mqtt import Subscription
from .plate import plate_frame, plate_html

__all__ = [
    "RESULT_COLUMNS", "Diagnostic", "Lab", "LabwrightError", "ProtocolError", "Quote", "Run", "RunFailed",
    "Subscription", "Validation", "plate_frame", "plate_html",
]
