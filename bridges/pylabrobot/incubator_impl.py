"""The PyLabRobot bridge's Incubator feature (`Incubator.sila.xml`) on a PyLabRobot Incubator
with one 21-place plate rack (a Cytomat rack of 23 mm sites). The lab's arm leaves the plate on the loading tray and takes it
from there: Incubate takes it in, holds it, and brings it back. Backend: $LW_PLR_INCUBATOR
(`chatterbox`, PyLabRobot's device-free backend).
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

from sila2.server import MetadataDict, ObservableCommandInstance

from ..generated.incubator import Incubate_Responses, IncubatorBase, MachineFailed
from .machine import MachineLoop, backend

if TYPE_CHECKING:
    from ..server import Server


def _chatterbox():
    from pylabrobot.storage.chatterbox import IncubatorChatterboxBackend

    return IncubatorChatterboxBackend()


class IncubatorImpl(IncubatorBase):
    def __init__(self, parent_server: Server) -> None:
        super().__init__(parent_server=parent_server)
        self.Incubate_default_lifetime_of_execution = timedelta(days=14)
        self.machine = MachineLoop()
        self.incubator = None
        self.machine.run(self._setup(), "setting up the incubator", MachineFailed)

    async def _setup(self) -> None:
        from pylabrobot.resources import Coordinate
        from pylabrobot.storage import Incubator
        from pylabrobot.storage.cytomat.racks import cytomat_rack_23mm_21

        chosen = backend("incubator", "LW_PLR_INCUBATOR", {"chatterbox": _chatterbox})
        self.incubator = Incubator(
            backend=chosen, name="lw-incubator", size_x=600.0, size_y=600.0, size_z=600.0,
            racks=[cytomat_rack_23mm_21(name="lw-rack")], loading_tray_location=Coordinate(0, 0, 0),
        )
        await self.incubator.setup()

    def Incubate(
        self, Plate: str, Temperature: float, Duration: float, ShakeSpeed: float, *,
        metadata: MetadataDict, instance: ObservableCommandInstance,
    ) -> Incubate_Responses:
        from pylabrobot.resources import Cor_96_wellplate_360ul_Fb

        instance.begin_execution()
        inc = self.incubator

        async def take_in() -> None:
            await inc.set_temperature(Temperature)
            if inc.loading_tray.resource is None:
                inc.loading_tray.assign_child_resource(Cor_96_wellplate_360ul_Fb(name=Plate))
            await inc.take_in_plate("smallest")
            if ShakeSpeed > 0:
                await inc.start_shaking(frequency=ShakeSpeed / 60.0)

        self.machine.run(take_in(), f"taking {Plate} in at {Temperature} °C", MachineFailed)
        steps = 20
        for i in range(steps):
            instance.progress = i / steps
            self.machine.run(asyncio.sleep(Duration / steps), "incubating", MachineFailed)

        async def bring_back() -> None:
            if ShakeSpeed > 0:
                await inc.stop_shaking()
            plate = await inc.fetch_plate_to_loading_tray(Plate)
            plate.unassign()  # the arm takes it from the tray

        self.machine.run(bring_back(), f"bringing {Plate} back to the loading tray", MachineFailed)
        return Incubate_Responses()
