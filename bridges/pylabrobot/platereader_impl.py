"""The PyLabRobot bridge's PlateReader feature (`PlateReader.sila.xml`) on a PyLabRobot
PlateReader. A 96-well plate resource stands in the reader (the bridge does not move plates: the
lab's arm does); each read returns one value per requested well, in order. Backend:
$LW_PLR_READER (`chatterbox`, PyLabRobot's device-free backend; `clariostar` for a BMG
CLARIOstar on USB).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List

from sila2.server import MetadataDict

from ..generated.platereader import (
    MachineFailed,
    PlateReaderBase,
    ReadAbsorbance_Responses,
    ReadFluorescence_Responses,
    ReadLuminescence_Responses,
)
from .machine import MachineLoop, backend

if TYPE_CHECKING:
    from ..server import Server

FOCAL_HEIGHT_MM = 13.0


def _chatterbox():
    from pylabrobot.plate_reading.chatterbox import PlateReaderChatterboxBackend

    return PlateReaderChatterboxBackend()


def _clariostar():
    from pylabrobot.plate_reading import CLARIOstarBackend

    return CLARIOstarBackend()


class PlateReaderImpl(PlateReaderBase):
    def __init__(self, parent_server: Server) -> None:
        super().__init__(parent_server=parent_server)
        self.machine = MachineLoop()
        self.reader = None
        self.machine.run(self._setup(), "setting up the plate reader", MachineFailed)

    async def _setup(self) -> None:
        from pylabrobot.plate_reading import PlateReader
        from pylabrobot.resources import Cor_96_wellplate_360ul_Fb

        chosen = backend("plate reader", "LW_PLR_READER", {"chatterbox": _chatterbox, "clariostar": _clariostar})
        self.reader = PlateReader(name="lw-reader", size_x=128.0, size_y=86.0, size_z=20.0, backend=chosen)
        self.reader.assign_child_resource(Cor_96_wellplate_360ul_Fb(name="lw-plate"))
        await self.reader.setup()

    def _values(self, what: str, read, wells: List[str]) -> List[float]:
        plate = self.reader.get_plate()
        try:
            chosen = [plate.get_well(w) for w in wells]
        except Exception as e:
            raise MachineFailed(f"{what}: no such well: {e}")
        result = self.machine.run(read(chosen), what, MachineFailed)
        data = result[0]["data"]
        return [float(data[w.get_row()][w.get_column()]) for w in chosen]

    def ReadAbsorbance(self, Plate: str, Wells: List[str], Wavelength: int, *, metadata: MetadataDict) -> ReadAbsorbance_Responses:
        read = lambda ws: self.reader.read_absorbance(wavelength=Wavelength, wells=ws, use_new_return_type=True)
        return ReadAbsorbance_Responses(Values=self._values(f"reading absorbance of {Plate} at {Wavelength} nm", read, Wells))

    def ReadFluorescence(
        self, Plate: str, Wells: List[str], Excitation: int, Emission: int, *, metadata: MetadataDict
    ) -> ReadFluorescence_Responses:
        read = lambda ws: self.reader.read_fluorescence(
            excitation_wavelength=Excitation, emission_wavelength=Emission, focal_height=FOCAL_HEIGHT_MM,
            wells=ws, use_new_return_type=True,
        )
        return ReadFluorescence_Responses(Values=self._values(f"reading fluorescence of {Plate}", read, Wells))

    def ReadLuminescence(self, Plate: str, Wells: List[str], *, metadata: MetadataDict) -> ReadLuminescence_Responses:
        read = lambda ws: self.reader.read_luminescence(focal_height=FOCAL_HEIGHT_MM, wells=ws, use_new_return_type=True)
        return ReadLuminescence_Responses(Values=self._values(f"reading luminescence of {Plate}", read, Wells))
