"""DNA normalisation: each sample brought to the same concentration in a new plate. The
number of samples and the final volume are customisation fields, read with get_values as the
Protocol Library's protocols do."""

metadata = {"protocolName": "Normalisation", "author": "Labwright tests"}
requirements = {"robotType": "OT-2", "apiLevel": "2.16"}


def run(ctx):
    [samples, final_ul] = get_values("samples", "final_ul")
    tips = ctx.load_labware("opentrons_96_tiprack_300ul", 1)
    source = ctx.load_labware("corning_96_wellplate_360ul_flat", 2, label="samples")
    dest = ctx.load_labware("corning_96_wellplate_360ul_flat", 3, label="normalised")
    water = ctx.load_labware("nest_12_reservoir_15ml", 4)
    p300 = ctx.load_instrument("p300_single_gen2", "right", tip_racks=[tips])
    diluent = ctx.define_liquid("water", "nuclease-free water", "#00aaff")
    dna = ctx.define_liquid("dna", "samples", "#aa0000")
    water["A1"].load_liquid(diluent, 12000)
    for w in source.wells()[:samples]:
        w.load_liquid(dna, 150)

    # Measured concentrations (ng/uL); every sample goes to 20 ng/uL.
    concentrations = [40 + 10 * i for i in range(samples)]
    for i, c in enumerate(concentrations):
        sample_ul = final_ul * 20 / c
        p300.transfer(final_ul - sample_ul, water["A1"], dest.wells()[i], new_tip="always")
        p300.transfer(sample_ul, source.wells()[i], dest.wells()[i], mix_after=(2, 40), new_tip="always")
