"""Labwright's PyLabRobot bridge: serves a PyLabRobot liquid handler as a SiLA 2 server with the
LiquidHandler feature of `LiquidHandler.sila.xml`, so labd drives it through its generic SiLA 2
path (a `sila` mapping in lab.toml, see docs/instruments.md).

    python bridge.py --port 50070 [--backend star-chatterbox] [--firmware-log FILE] [--workdir DIR]

Needs `sila2[codegen]` and `pylabrobot` in the same Python. The server package is generated from
the feature definition with `sila2-codegen` into --workdir (a temporary directory by default).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ip-address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50070)
    p.add_argument("--backend", default="star-chatterbox", help="the PyLabRobot backend (star-chatterbox)")
    p.add_argument("--firmware-log", help="append every firmware command the backend sends to this file")
    p.add_argument("--workdir", help="where to generate the server package")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lw-plr-bridge-"))
    codegen = Path(sys.executable).parent / "sila2-codegen"
    if not (work / "lwplr").exists():
        subprocess.run(
            [str(codegen), "new-package", "-n", "lwplr", "-o", str(work), str(HERE / "LiquidHandler.sila.xml")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    shutil.copy(HERE / "liquidhandler_impl.py", work / "lwplr" / "feature_implementations" / "liquidhandler_impl.py")
    env = dict(os.environ, LW_PLR_BACKEND=args.backend)
    if args.firmware_log:
        env["LW_PLR_FIRMWARE_LOG"] = str(Path(args.firmware_log).resolve())
    cmd = [sys.executable, "-m", "lwplr", "--ip-address", args.ip_address, "--port", str(args.port),
           "--disable-discovery", "--insecure"]
    os.chdir(work)
    os.execve(sys.executable, cmd, env)


if __name__ == "__main__":
    main()
