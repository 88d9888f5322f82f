"""Test-fixture implementation of Labwright's PlateReader feature on the Python `sila2` server.

`sila2-codegen new-package` generates the server package from `protos/proto/sila2/PlateReader.sila.xml`
(the FDL Labwright ships); this file replaces the generated `feature_implementations/platereader_impl.py`.
It behaves like a small reader: a door, one plate, absorbance, fluorescence and luminescence with
progress.
Labwright's Rust client drives it in `devices/tests/it/reader.rs`.
"""
from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, List, Optional

from sila2.server import MetadataDict, ObservableCommandInstance

from ..generated.platereader import (
    DoorStuck,
    EjectPlate_Responses,
    LoadPlate_Responses,
    NoPlateLoaded,
    PlateAlreadyLoaded,
    PlateReaderBase,
    ReadAbsorbance_Responses,
    ReadFluorescence_Responses,
    ReadLuminescence_Responses,
)

if TYPE_CHECKING:
    from ..server import Server


def _value(well: str, wavelength: float) -> float:
    column = int("".join(c for c in well if c.isdigit()) or "1")
    return round(0.05 + 1.5 * 0.5 ** (column - 1) + wavelength / 100000.0, 4)


class PlateReaderImpl(PlateReaderBase):
    def __init__(self, parent_server: Server) -> None:
        super().__init__(parent_server=parent_server)
        self.ReadAbsorbance_default_lifetime_of_execution = timedelta(minutes=30)
        self.ReadFluorescence_default_lifetime_of_execution = timedelta(minutes=30)
        self.ReadLuminescence_default_lifetime_of_execution = timedelta(minutes=30)
        self.plate: Optional[str] = None
        self.update_CurrentTemperature(26.5)

    def get_PlatePresent(self, *, metadata: MetadataDict) -> bool:
        return self.plate is not None

    def LoadPlate(self, Labware: str, *, metadata: MetadataDict) -> LoadPlate_Responses:
        if Labware == "stuck":
            raise DoorStuck("the door is blocked by a test")
        if self.plate is not None:
            raise PlateAlreadyLoaded(f"plate {self.plate} is still in the reader")
        self.plate = Labware
        return LoadPlate_Responses()

    def EjectPlate(self, *, metadata: MetadataDict) -> EjectPlate_Responses:
        if self.plate is None:
            raise NoPlateLoaded("nothing to eject")
        self.plate = None
        return EjectPlate_Responses()

    def _progress(self, instance: ObservableCommandInstance, steps: int = 5) -> None:
        instance.begin_execution()
        for i in range(steps):
            instance.progress = i / steps
            instance.estimated_remaining_time = timedelta(seconds=0.05 * (steps - i))
            time.sleep(0.05)
        if self.plate is None:
            raise NoPlateLoaded("there is no plate in the reader")

    def ReadAbsorbance(
        self, Wells: List[str], Wavelengths: List[float], *, metadata: MetadataDict, instance: ObservableCommandInstance
    ) -> ReadAbsorbance_Responses:
        self._progress(instance)
        values = [_value(w, wl) for w in Wells for wl in Wavelengths]
        return ReadAbsorbance_Responses(Values=values, Unit="OD")

    def ReadFluorescence(
        self,
        Wells: List[str],
        ExcitationWavelength: float,
        EmissionWavelength: float,
        *,
        metadata: MetadataDict,
        instance: ObservableCommandInstance,
    ) -> ReadFluorescence_Responses:
        self._progress(instance)
        values = [_value(w, EmissionWavelength) * 10000 for w in Wells]
        return ReadFluorescence_Responses(Values=values, Unit="RFU")

    def ReadLuminescence(
        self,
        Wells: List[str],
        IntegrationTime: float,
        *,
        metadata: MetadataDict,
        instance: ObservableCommandInstance,
    ) -> ReadLuminescence_Responses:
        self._progress(instance)
        values = [round(_value(w, 0.0) * 100000 * IntegrationTime) for w in Wells]
        return ReadLuminescence_Responses(Values=values, Unit="RLU")
