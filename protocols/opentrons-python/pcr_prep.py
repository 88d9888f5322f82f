"""PCR prep: master mix and DNA into a plate held cold in the Thermocycler, then cycled."""
from opentrons import protocol_api

metadata = {"protocolName": "PCR prep", "author": "Labwright tests"}
requirements = {"robotType": "OT-2", "apiLevel": "2.16"}


def run(protocol: protocol_api.ProtocolContext):
    tc = protocol.load_module("thermocyclerModuleV2")
    plate = tc.load_labware("nest_96_wellplate_100ul_pcr_full_skirt", label="pcr plate")
    tips = protocol.load_labware("opentrons_96_tiprack_20ul", 1)
    reagents = protocol.load_labware("nest_12_reservoir_15ml", 2)
    p20 = protocol.load_instrument("p20_single_gen2", "right", tip_racks=[tips])
    mix = protocol.define_liquid("master mix", "2x PCR master mix", "#ffaa00")
    reagents["A1"].load_liquid(mix, 2000)

    tc.open_lid()
    tc.set_block_temperature(4)
    for well in plate.wells()[:8]:
        p20.transfer(15, reagents["A1"], well)
    tc.close_lid()
    tc.set_lid_temperature(105)
    tc.execute_profile(
        steps=[{"temperature": 95, "hold_time_seconds": 30}, {"temperature": 60, "hold_time_seconds": 30}],
        repetitions=30,
        block_max_volume=20,
    )
    tc.open_lid()
