"""Checks what Labwright's Opentrons driver posts and what its simulated robot answers against
Opentrons' own protocol-engine models (PyPI `opentrons`, which needs Python >= 3.12):

- every command body the driver posted parses as a `CommandCreate`;
- every command resource the simulator served parses as a `Command` (loadLabware's result
  carries a labware definition, so this also checks Labwright's Opentrons labware export);
- every error type the simulator can report is a protocol-engine error: an exception class
  or a defined error's `errorType`.

Reads one JSON file {"posted": [...], "commands": [...], "error_types": [...]}; prints one JSON
line and exits 1 on the first kind of mismatch found.

    python ot_engine_check.py FILE
"""
import json
import sys

import pydantic
from opentrons.protocol_engine import errors
from opentrons.protocol_engine.commands import Command, CommandCreate
from opentrons.protocol_engine.commands import pick_up_tip, pipetting_common


def defined_error_types() -> set:
    out = set()
    for module in (pipetting_common, pick_up_tip):
        for name in dir(module):
            model = getattr(module, name)
            field = getattr(model, "model_fields", {}).get("errorType")
            if field is not None and isinstance(field.default, str):
                out.add(field.default)
    return out


def main() -> None:
    data = json.load(open(sys.argv[1]))
    create, command = pydantic.TypeAdapter(CommandCreate), pydantic.TypeAdapter(Command)
    problems = []
    for body in data["posted"]:
        try:
            create.validate_python(body["data"])
        except pydantic.ValidationError as e:
            problems.append(f"posted {body['data'].get('commandType')}: {e}")
    for c in data["commands"]:
        try:
            command.validate_python(c)
        except pydantic.ValidationError as e:
            problems.append(f"served {c.get('commandType')}: {e}")
    known = {n for n in dir(errors) if n.endswith("Error")}
    known |= {n for n in dir(errors.exceptions) if n.endswith("Error")}
    known |= set(getattr(errors, "__all__", []))
    known |= defined_error_types()
    unknown = [t for t in data["error_types"] if t not in known]
    if unknown:
        problems.append(f"error types the engine does not have: {unknown}")
    print(json.dumps({"posted": len(data["posted"]), "commands": len(data["commands"]),
                      "error_types": len(data["error_types"]), "problems": problems[:5]}))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
