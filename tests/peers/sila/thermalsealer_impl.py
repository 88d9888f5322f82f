"""Test-fixture implementation of a vendor-style ThermalSealer feature (`ThermalSealer.sila.xml`,
not Labwright's) on the Python `sila2` server; `sila2-codegen new-package` generates the package
and this file replaces the generated `feature_implementations/thermalsealer_impl.py`.
Every call is appended as one JSON line to $LW_STATION_LOG, so the test sees the values the
server received. A plate id containing "noplate" raises the defined error NoPlate.
"""
from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from sila2.server import MetadataDict, ObservableCommandInstance

from ..generated.thermalsealer import NoPlate, PeelPlate_Responses, SealPlate_Responses, ThermalSealerBase

if TYPE_CHECKING:
    from ..server import Server


def log(entry: dict) -> None:
    with open(os.environ["LW_STATION_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\n")


class ThermalSealerImpl(ThermalSealerBase):
    def __init__(self, parent_server: Server) -> None:
        super().__init__(parent_server=parent_server)
        self.SealPlate_default_lifetime_of_execution = timedelta(minutes=30)
        self.seals_left = 100

    def PeelPlate(self, PlateId: str, *, metadata: MetadataDict) -> PeelPlate_Responses:
        log({"command": "PeelPlate", "PlateId": PlateId})
        if "noplate" in PlateId:
            raise NoPlate(f"no plate {PlateId} in the sealer")
        return PeelPlate_Responses()

    def SealPlate(
        self,
        SealTemperature: float,
        SealTime: int,
        PlateId: str,
        *,
        metadata: MetadataDict,
        instance: ObservableCommandInstance,
    ) -> SealPlate_Responses:
        instance.begin_execution()
        log({"command": "SealPlate", "SealTemperature": SealTemperature, "SealTime": SealTime, "PlateId": PlateId})
        if "noplate" in PlateId:
            raise NoPlate(f"no plate {PlateId} in the sealer")
        for i in range(4):
            instance.progress = i / 4
            time.sleep(0.02)
        self.seals_left -= 1
        return SealPlate_Responses(SealsLeft=self.seals_left)
