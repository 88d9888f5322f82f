"""Serves one Opentrons module emulator (PyPI `opentrons`) on a loopback TCP port.

Test-fixture code: Labwright's module drivers talk to it through a PTY that `socat` bridges to
this port, exactly as they would talk to a module on USB serial.

    python opentrons_module.py heatershaker|thermocycler|tempdeck PORT
"""
import asyncio
import sys

from opentrons.hardware_control.emulation.heater_shaker import HeaterShakerEmulator
from opentrons.hardware_control.emulation.parser import Parser
from opentrons.hardware_control.emulation.run_emulator import run_emulator_server
from opentrons.hardware_control.emulation.settings import Settings
from opentrons.hardware_control.emulation.tempdeck import TempDeckEmulator
from opentrons.hardware_control.emulation.thermocycler import ThermocyclerEmulator


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    settings = Settings()
    emulator = {
        "heatershaker": lambda: HeaterShakerEmulator(Parser(), settings.heatershaker),
        "thermocycler": lambda: ThermocyclerEmulator(Parser(), settings.thermocycler),
        "tempdeck": lambda: TempDeckEmulator(Parser(), settings.tempdeck),
    }[kind]()
    asyncio.run(run_emulator_server("127.0.0.1", port, emulator))


if __name__ == "__main__":
    main()
