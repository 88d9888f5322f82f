"""Drives a robot HTTP API with Opentrons' Python client `ot_api` (PyPI
`opentrons-http-api-client`, what PyLabRobot's OT-2 backend uses): health, a run, the mounted
pipettes, labware, a tip, 50 uL from src/A1 to plate/B2, the tip into the trash, and one command
the robot must refuse. Prints one JSON line with what it saw.

Test-fixture code for Labwright's simulated Opentrons robot.

    python ot_http_client.py HOST PORT
"""
import json
import sys
# ot_api 0.2.1 imports `urllib` but uses `urllib.request` without importing it; in PyLabRobot
# something else has imported it first. Do the same here.
import urllib.request  # noqa: F401

import ot_api
from ot_api.decorators import OTError


def main() -> None:
    ot_api.set_host(sys.argv[1])
    ot_api.set_port(int(sys.argv[2]))
    health = ot_api.health.get()
    run_id = ot_api.runs.create()
    ot_api.set_run(run_id)
    left, right = ot_api.lh.add_mounted_pipettes(run_id=run_id)
    p300 = right["pipetteId"]
    tips = ot_api.labware.add("opentrons_96_tiprack_300ul", "opentrons", 1, 1, run_id=run_id, display_name="tips")
    src = ot_api.labware.add("nest_12_reservoir_15ml", "opentrons", 1, 2, run_id=run_id, display_name="src")
    plate = ot_api.labware.add("corning_96_wellplate_360ul_flat", "opentrons", 1, 3, run_id=run_id, display_name="plate")
    ids = {name: r["data"]["result"]["labwareId"] for name, r in (("tips", tips), ("src", src), ("plate", plate))}
    refused = ""
    try:
        ot_api.lh.aspirate(ids["src"], "A1", 10, 92.86, p300, run_id=run_id)
    except OTError as e:
        refused = str(e)
    ot_api.lh.pick_up_tip(ids["tips"], "A1", p300, run_id=run_id)
    ot_api.lh.aspirate(ids["src"], "A1", 50, 92.86, p300, run_id=run_id)
    ot_api.lh.dispense(ids["plate"], "B2", 50, 92.86, p300, run_id=run_id)
    ot_api.lh.move_to_addressable_area_for_drop_tip(p300, run_id=run_id)
    ot_api.lh.drop_tip_in_place(p300, run_id=run_id)
    run = ot_api.runs.get_run(run_id)
    print(json.dumps({
        "robot_model": health["robot_model"],
        "left": left and left["name"],
        "run_status": run["status"],
        "refused": refused,
    }))


if __name__ == "__main__":
    main()
