"""Test-fixture implementation of a vendor-style AbsorbanceReader feature
(`AbsorbanceReader.sila.xml`, not Labwright's) on the Python `sila2` server; replaces the
generated `feature_implementations/absorbancereader_impl.py`. Every call is appended as one JSON
line to $LW_STATION_LOG. A well's optical density is a function of its row, column and the
wavelength (so the test can tell every value's place); the reader has filters for 405, 450, 600
and 650 nm only.
"""
from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import TYPE_CHECKING, List

from sila2.server import MetadataDict, ObservableCommandInstance

from ..generated.absorbancereader import (
    AbsorbanceReaderBase,
    MeasureAbsorbance_Responses,
    MeasureLuminescence_Responses,
    WavelengthNotAvailable,
)

if TYPE_CHECKING:
    from ..server import Server

FILTERS = (405, 450, 600, 650)


def density(well: str, wavelength: int) -> float:
    row, column = ord(well[0]) - ord("A"), int(well[1:])
    return round(0.05 + row * 0.1 + column * 0.001 + wavelength / 100000, 6)


class AbsorbanceReaderImpl(AbsorbanceReaderBase):
    def __init__(self, parent_server: Server) -> None:
        super().__init__(parent_server=parent_server)
        self.MeasureAbsorbance_default_lifetime_of_execution = timedelta(minutes=5)

    def _log(self, entry: dict) -> None:
        with open(os.environ["LW_STATION_LOG"], "a") as f:
            f.write(json.dumps(entry) + "\n")

    def MeasureAbsorbance(
        self,
        PlateId: str,
        Wells: List[str],
        Wavelength: int,
        *,
        metadata: MetadataDict,
        instance: ObservableCommandInstance,
    ) -> MeasureAbsorbance_Responses:
        instance.begin_execution()
        self._log({"command": "MeasureAbsorbance", "PlateId": PlateId, "Wells": list(Wells), "Wavelength": Wavelength})
        if Wavelength not in FILTERS:
            raise WavelengthNotAvailable(f"no filter for {Wavelength} nm (filters: {FILTERS})")
        for i in range(5):
            instance.progress = i / 5
            time.sleep(0.02)
        return MeasureAbsorbance_Responses(OpticalDensities=[density(w, Wavelength) for w in Wells])

    def MeasureLuminescence(self, Wells: List[str], *, metadata: MetadataDict) -> MeasureLuminescence_Responses:
        self._log({"command": "MeasureLuminescence", "Wells": list(Wells)})
        return MeasureLuminescence_Responses(Counts=[1000 + i for i, _ in enumerate(Wells)])
