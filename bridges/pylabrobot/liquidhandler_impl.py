"""The PyLabRobot bridge's LiquidHandler feature (`LiquidHandler.sila.xml`): each SiLA command is
one PyLabRobot call on the machine's LiquidHandler. `bridge.py` generates the SiLA server package
with `sila2-codegen` and puts this file in as `feature_implementations/liquidhandler_impl.py`.

PyLabRobot is asynchronous and the `sila2` server calls implementations from its worker threads,
so the machine lives on one asyncio loop in a thread of its own and every call is handed to it.
Configuration comes from the environment `bridge.py` sets: LW_PLR_BACKEND (the backend) and
LW_PLR_FIRMWARE_LOG (a file that receives every firmware command the backend sends, one per line).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Dict

from sila2.server import MetadataDict

from ..generated.liquidhandler import (
    Aspirate_Responses,
    Dispense_Responses,
    DropTip_Responses,
    LiquidHandlerBase,
    LiquidHandlingFailed,
    Mix_Responses,
    PickUpTip_Responses,
    SetDeck_Responses,
    UnknownLabware,
)

if TYPE_CHECKING:
    from ..server import Server

# Labwright labware types (load names) as the resources of a Hamilton STAR(let) deck: tips are the
# machine's own of the same volume; plates and troughs the same labware in PyLabRobot's library.
TIP_RACKS = {
    "opentrons_96_tiprack_20ul": "hamilton_96_tiprack_50uL",
    "opentrons_96_tiprack_300ul": "hamilton_96_tiprack_300uL",
    "opentrons_96_tiprack_1000ul": "hamilton_96_tiprack_1000uL",
}
PLATES = {
    "corning_96_wellplate_360ul_flat": "cor_96_wellplate_360uL_Fb",
    "nest_12_reservoir_15ml": "nest_12_troughplate_15000uL_Vb",
}


class _FirmwareLog(logging.Handler):
    """Writes each command a PyLabRobot backend logs at its IO level to a file, one per line."""

    def __init__(self, path: str) -> None:
        super().__init__(level=1)
        self.file = open(path, "a", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        from pylabrobot.io.validation_utils import LOG_LEVEL_IO

        if record.levelno == LOG_LEVEL_IO:
            self.file.write(record.getMessage() + "\n")


class LiquidHandlerImpl(LiquidHandlerBase):
    def __init__(self, parent_server: Server) -> None:
        super().__init__(parent_server=parent_server)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.lh = None
        self.resources: Dict[str, object] = {}
        self.run(self._setup())
        # After setup: importing PyLabRobot configures its logger's level.
        log = os.environ.get("LW_PLR_FIRMWARE_LOG")
        if log:
            logger = logging.getLogger("pylabrobot")
            logger.setLevel(1)
            logger.addHandler(_FirmwareLog(log))

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _setup(self) -> None:
        from pylabrobot.liquid_handling import LiquidHandler
        from pylabrobot.resources import STARLetDeck

        backend = os.environ.get("LW_PLR_BACKEND", "star-chatterbox")
        if backend != "star-chatterbox":
            raise ValueError(f"unknown backend {backend!r}; this bridge knows star-chatterbox")
        from pylabrobot.liquid_handling.backends.hamilton.STAR_chatterbox import STARChatterboxBackend

        self.lh = LiquidHandler(backend=STARChatterboxBackend(), deck=STARLetDeck())
        await self.lh.setup()

    def _step(self, what: str, coro):
        try:
            return self.run(coro)
        except (UnknownLabware, LiquidHandlingFailed):
            raise
        except Exception as e:  # PyLabRobot's own errors, in its words
            raise LiquidHandlingFailed(f"{what}: {type(e).__name__}: {e}")

    def _get(self, name: str):
        if name not in self.resources:
            raise UnknownLabware(f"labware {name!r} is not on the deck; SetDeck first")
        return self.resources[name]

    def SetDeck(self, Deck: str, *, metadata: MetadataDict) -> SetDeck_Responses:
        import pylabrobot.resources as r

        items = json.loads(Deck)
        for item in items:
            if item["load_name"] not in TIP_RACKS and item["load_name"] not in PLATES:
                raise UnknownLabware(
                    f"{item['name']} is a {item['load_name']}, which this bridge cannot place "
                    f"(it places {', '.join(sorted(TIP_RACKS) + sorted(PLATES))})"
                )

        async def place() -> None:
            deck = self.lh.deck
            for child in list(deck.children):
                if child.name.startswith("lw-"):
                    deck.unassign_child_resource(child)
            self.resources = {}
            tips = [i for i in items if i["load_name"] in TIP_RACKS]
            plates = [i for i in items if i["load_name"] in PLATES]
            for n, group in enumerate([tips[k:k + 5] for k in range(0, len(tips), 5)]):
                carrier = r.TIP_CAR_480_A00(name=f"lw-tips-{n}")
                for pos, item in enumerate(group):
                    carrier[pos] = self.resources[item["name"]] = getattr(r, TIP_RACKS[item["load_name"]])(name=item["name"])
                deck.assign_child_resource(carrier, rails=1 + 6 * n)
            for n, group in enumerate([plates[k:k + 5] for k in range(0, len(plates), 5)]):
                carrier = r.PLT_CAR_L5AC_A00(name=f"lw-plates-{n}")
                for pos, item in enumerate(group):
                    carrier[pos] = self.resources[item["name"]] = getattr(r, PLATES[item["load_name"]])(name=item["name"])
                deck.assign_child_resource(carrier, rails=13 + 6 * n)

        self._step("placing the deck", place())
        return SetDeck_Responses()

    def PickUpTip(self, Pipette: str, Rack: str, Well: str, *, metadata: MetadataDict) -> PickUpTip_Responses:
        rack = self._get(Rack)
        self._step(f"picking up a tip at {Rack} {Well}", self.lh.pick_up_tips([rack.get_item(Well)], use_channels=[0]))
        return PickUpTip_Responses()

    def Aspirate(self, Pipette: str, Labware: str, Well: str, Volume: float, *, metadata: MetadataDict) -> Aspirate_Responses:
        well = self._get(Labware).get_well(Well)
        self._step(f"aspirating {Volume} uL from {Labware} {Well}", self.lh.aspirate([well], vols=[Volume], use_channels=[0]))
        return Aspirate_Responses()

    def Dispense(self, Pipette: str, Labware: str, Well: str, Volume: float, *, metadata: MetadataDict) -> Dispense_Responses:
        well = self._get(Labware).get_well(Well)
        self._step(f"dispensing {Volume} uL into {Labware} {Well}", self.lh.dispense([well], vols=[Volume], use_channels=[0]))
        return Dispense_Responses()

    def Mix(self, Pipette: str, Labware: str, Well: str, Volume: float, Times: int, *, metadata: MetadataDict) -> Mix_Responses:
        well = self._get(Labware).get_well(Well)

        async def cycles() -> None:
            for _ in range(Times):
                await self.lh.aspirate([well], vols=[Volume], use_channels=[0])
                await self.lh.dispense([well], vols=[Volume], use_channels=[0])

        self._step(f"mixing {Volume} uL in {Labware} {Well}", cycles())
        return Mix_Responses()

    def DropTip(self, Pipette: str, *, metadata: MetadataDict) -> DropTip_Responses:
        self._step("discarding the tip", self.lh.discard_tips(use_channels=[0]))
        return DropTip_Responses()
