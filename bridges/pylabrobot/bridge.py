"""Labwright's PyLabRobot bridge: serves PyLabRobot machines as one SiLA 2 server, one feature per
machine type (`LiquidHandler.sila.xml`, `PlateReader.sila.xml`, `HeaterShaker.sila.xml`,
`Centrifuge.sila.xml`, `Incubator.sila.xml`), so labd drives them through its generic SiLA 2 path (a `sila` mapping in
lab.toml, see docs/instruments.md and lab.toml here).

    python bridge.py --port 50070 [--liquid-handler star-chatterbox] [--reader chatterbox]
                     [--heater-shaker chatterbox] [--centrifuge chatterbox] [--incubator chatterbox]
                     [--firmware-log FILE] [--machine-log FILE] [--workdir DIR]

A machine left out (or given `none`) is not served: its feature is not in the server, and labd
refuses a mapping to it at connect. Needs `sila2[codegen]` and `pylabrobot` in the same Python.
The server package is generated from the feature definitions with `sila2-codegen` into
--workdir (a temporary directory by default).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Option → (feature definition, implementation, environment variable naming the backend).
MACHINES = {
    "liquid_handler": ("LiquidHandler.sila.xml", "liquidhandler_impl.py", "LW_PLR_BACKEND"),
    "reader": ("PlateReader.sila.xml", "platereader_impl.py", "LW_PLR_READER"),
    "heater_shaker": ("HeaterShaker.sila.xml", "heatershaker_impl.py", "LW_PLR_HEATER_SHAKER"),
    "centrifuge": ("Centrifuge.sila.xml", "centrifuge_impl.py", "LW_PLR_CENTRIFUGE"),
    "incubator": ("Incubator.sila.xml", "incubator_impl.py", "LW_PLR_INCUBATOR"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ip-address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50070)
    p.add_argument("--liquid-handler", "--backend", dest="liquid_handler", default="star-chatterbox",
                   help="the liquid handler's PyLabRobot backend (star-chatterbox), or none")
    p.add_argument("--reader", default="none", help="the plate reader's backend (chatterbox, clariostar), or none")
    p.add_argument("--heater-shaker", default="none", help="the heater-shaker's backend (chatterbox), or none")
    p.add_argument("--centrifuge", default="none", help="the centrifuge's backend (chatterbox), or none")
    p.add_argument("--incubator", default="none", help="the incubator's backend (chatterbox), or none")
    p.add_argument("--firmware-log", help="append every firmware command the liquid handler's backend sends to this file")
    p.add_argument("--machine-log", help="append what the other machines' chatterbox backends print to this file")
    p.add_argument("--workdir", help="where to generate the server package")
    args = p.parse_args()
    served = [m for m in MACHINES if getattr(args, m) != "none"]
    if not served:
        p.error("no machine to serve")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lw-plr-bridge-"))
    package = work / ("lwplr_" + "_".join(served))
    if not package.exists():
        codegen = Path(sys.executable).parent / "sila2-codegen"
        fdls = [str(HERE / MACHINES[m][0]) for m in served]
        subprocess.run([str(codegen), "new-package", "-n", package.name, "-o", str(package), *fdls],
                       check=True, stdout=subprocess.DEVNULL)
    impls = package / package.name / "feature_implementations"
    shutil.copy(HERE / "machine.py", impls / "machine.py")
    env = dict(os.environ)
    for m in served:
        shutil.copy(HERE / MACHINES[m][1], impls / MACHINES[m][1])
        env[MACHINES[m][2]] = getattr(args, m)
    if args.firmware_log:
        env["LW_PLR_FIRMWARE_LOG"] = str(Path(args.firmware_log).resolve())
    if args.machine_log:
        env["LW_PLR_MACHINE_LOG"] = str(Path(args.machine_log).resolve())
    cmd = [sys.executable, "-m", package.name, "--ip-address", args.ip_address, "--port", str(args.port),
           "--disable-discovery", "--insecure"]
    os.chdir(package)
    os.execve(sys.executable, cmd, env)


if __name__ == "__main__":
    main()
