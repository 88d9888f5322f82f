"""The PyLabRobot bridge's Centrifuge feature (`Centrifuge.sila.xml`) on a PyLabRobot Centrifuge.
Backend: $LW_PLR_CENTRIFUGE (`chatterbox`, PyLabRobot's device-free backend).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sila2.server import MetadataDict

from ..generated.centrifuge import CentrifugeBase, MachineFailed, Spin_Responses
from .machine import MachineLoop, backend

if TYPE_CHECKING:
    from ..server import Server

# Fraction of the rotor's maximum acceleration (PyLabRobot's VSpin default).
ACCELERATION = 0.8


def _chatterbox():
    from pylabrobot.centrifuge.chatterbox import CentrifugeChatterboxBackend

    return CentrifugeChatterboxBackend()


class CentrifugeImpl(CentrifugeBase):
    def __init__(self, parent_server: Server) -> None:
        super().__init__(parent_server=parent_server)
        self.machine = MachineLoop()
        self.cf = None
        self.machine.run(self._setup(), "setting up the centrifuge", MachineFailed)

    async def _setup(self) -> None:
        from pylabrobot.centrifuge import Centrifuge

        chosen = backend("centrifuge", "LW_PLR_CENTRIFUGE", {"chatterbox": _chatterbox})
        self.cf = Centrifuge(backend=chosen, name="lw-centrifuge", size_x=300.0, size_y=300.0, size_z=300.0)
        await self.cf.setup()

    def Spin(self, Force: float, Duration: float, *, metadata: MetadataDict) -> Spin_Responses:
        async def cycle() -> None:
            await self.cf.close_door()
            await self.cf.spin(g=Force, duration=Duration, acceleration=ACCELERATION)
            await self.cf.open_door()

        self.machine.run(cycle(), f"spinning at {Force} g for {Duration} s", MachineFailed)
        return Spin_Responses()
