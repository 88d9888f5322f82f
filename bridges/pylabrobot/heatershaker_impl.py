"""The PyLabRobot bridge's HeaterShaker feature (`HeaterShaker.sila.xml`) on a PyLabRobot
HeaterShaker. Backend: $LW_PLR_HEATER_SHAKER (`chatterbox`, PyLabRobot's device-free backend).
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

from sila2.server import MetadataDict, ObservableCommandInstance

from ..generated.heatershaker import (
    Deactivate_Responses,
    HeaterShakerBase,
    MachineFailed,
    SetLatch_Responses,
    SetTemperature_Responses,
    Shake_Responses,
    StartShaking_Responses,
    StopShaking_Responses,
    WaitForTemperature_Responses,
)
from .machine import MachineLoop, backend

if TYPE_CHECKING:
    from ..server import Server


def _chatterbox():
    from pylabrobot.heating_shaking import HeaterShakerChatterboxBackend

    return HeaterShakerChatterboxBackend()


class HeaterShakerImpl(HeaterShakerBase):
    def __init__(self, parent_server: Server) -> None:
        super().__init__(parent_server=parent_server)
        self.Shake_default_lifetime_of_execution = timedelta(hours=48)
        self.machine = MachineLoop()
        self.hs = None
        self.machine.run(self._setup(), "setting up the heater-shaker", MachineFailed)

    async def _setup(self) -> None:
        from pylabrobot.heating_shaking import HeaterShaker
        from pylabrobot.resources import Coordinate

        chosen = backend("heater-shaker", "LW_PLR_HEATER_SHAKER", {"chatterbox": _chatterbox})
        self.hs = HeaterShaker(name="lw-hs", size_x=150.0, size_y=100.0, size_z=80.0, backend=chosen,
                               child_location=Coordinate(0, 0, 70))
        await self.hs.setup()

    def _do(self, what: str, coro) -> None:
        self.machine.run(coro, what, MachineFailed)

    def Shake(self, Speed: float, Duration: float, *, metadata: MetadataDict, instance: ObservableCommandInstance) -> Shake_Responses:
        instance.begin_execution()
        self._do(f"starting to shake at {Speed} rpm", self.hs.shake(speed=Speed))
        steps = 20
        for i in range(steps):
            instance.progress = i / steps
            self.machine.run(asyncio.sleep(Duration / steps), "shaking", MachineFailed)
        self._do("stopping the shaker", self.hs.stop_shaking())
        self._do("unlocking the plate", self.hs.unlock_plate())
        return Shake_Responses()

    def StartShaking(self, Speed: float, *, metadata: MetadataDict) -> StartShaking_Responses:
        self._do(f"starting to shake at {Speed} rpm", self.hs.shake(speed=Speed))
        return StartShaking_Responses()

    def StopShaking(self, *, metadata: MetadataDict) -> StopShaking_Responses:
        self._do("stopping the shaker", self.hs.stop_shaking())
        return StopShaking_Responses()

    def SetTemperature(self, Temperature: float, *, metadata: MetadataDict) -> SetTemperature_Responses:
        self._do(f"heating to {Temperature} °C", self.hs.set_temperature(Temperature))
        return SetTemperature_Responses()

    def WaitForTemperature(self, *, metadata: MetadataDict) -> WaitForTemperature_Responses:
        self._do("waiting for the temperature", self.hs.wait_for_temperature())
        return WaitForTemperature_Responses(Temperature=self.machine.run(self.hs.get_temperature(), "reading the temperature", MachineFailed))

    def Deactivate(self, *, metadata: MetadataDict) -> Deactivate_Responses:
        self._do("stopping heating", self.hs.deactivate())
        return Deactivate_Responses()

    def SetLatch(self, Open: bool, *, metadata: MetadataDict) -> SetLatch_Responses:
        self._do("opening the latch" if Open else "closing the latch", self.hs.unlock_plate() if Open else self.hs.lock_plate())
        return SetLatch_Responses()
