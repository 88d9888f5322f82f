"""Serial dilution, 1:2 across a row, as the Opentrons Protocol Library writes it."""
from opentrons import protocol_api

metadata = {
    "protocolName": "Serial dilution",
    "author": "Labwright tests",
    "description": "Diluent into columns 2-12 of row A, then a 1:2 series from column 1.",
}
requirements = {"robotType": "OT-2", "apiLevel": "2.16"}


def run(protocol: protocol_api.ProtocolContext):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 3, label="dilution plate")
    p300 = protocol.load_instrument("p300_single_gen2", "left", tip_racks=[tips])

    diluent = protocol.define_liquid("diluent", "PBS", "#3366ff")
    stock = protocol.define_liquid("stock", "compound stock", "#ff3300")
    reservoir["A1"].load_liquid(diluent, 10000)
    reservoir["A2"].load_liquid(stock, 5000)

    row = plate.rows()[0]
    p300.transfer(100, reservoir["A1"], row[1:])
    p300.transfer(200, reservoir["A2"], row[0])
    p300.transfer(100, row[:11], row[1:], mix_after=(3, 50))
