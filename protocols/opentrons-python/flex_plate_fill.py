"""Fill a plate's first column from a reservoir on a Flex, with a runtime parameter for the volume."""
from opentrons import protocol_api

metadata = {"protocolName": "Flex plate fill", "author": "Labwright tests"}
requirements = {"robotType": "Flex", "apiLevel": "2.20"}


def add_parameters(parameters):
    parameters.add_int(
        variable_name="volume_ul", display_name="Volume per well", default=100, minimum=20, maximum=250, unit="µL"
    )


def run(protocol: protocol_api.ProtocolContext):
    tips = protocol.load_labware("opentrons_flex_96_tiprack_1000ul", "B1")
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", "B2")
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", "C2", label="assay plate")
    protocol.load_trash_bin("A3")
    pipette = protocol.load_instrument("flex_1channel_1000", "left", tip_racks=[tips])
    buffer = protocol.define_liquid("buffer", "assay buffer", "#22aa22")
    reservoir["A1"].load_liquid(buffer, 8000)
    pipette.transfer(protocol.params.volume_ul, reservoir["A1"], plate.columns()[0], new_tip="once")
