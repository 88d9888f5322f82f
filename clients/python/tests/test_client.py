"""The Python client against a real labd: LABWRIGHT_URL and LABWRIGHT_TOKEN (a scientist's)
say which, LABWRIGHT_MQTT is that token's MQTT credentials (JSON); LABWRIGHT_EXAMPLES is the
repository's protocols/examples. Without them the tests
are skipped (the labd integration suite runs them with all three set)."""

import json
import os
import pathlib

import pandas as pd
import pytest

import labwright
from labwright import Lab, LabwrightError, ProtocolError, RESULT_COLUMNS, RunFailed

pytestmark = pytest.mark.skipif(
    not all(os.environ.get(v) for v in ("LABWRIGHT_URL", "LABWRIGHT_TOKEN", "LABWRIGHT_EXAMPLES", "LABWRIGHT_MQTT")),
    reason="needs a running labd: LABWRIGHT_URL, LABWRIGHT_TOKEN, LABWRIGHT_MQTT, LABWRIGHT_EXAMPLES",
)

EXAMPLES = pathlib.Path(os.environ.get("LABWRIGHT_EXAMPLES", "."))


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def dilution(lab):
    """One serial dilution, run to its end (the other tests read it)."""
    return lab.submit(EXAMPLES / "serial-dilution.yaml").wait(progress=False)


def test_the_installed_wheel_is_tested():
    # Not the source tree: the generated stubs exist only in what was built.
    assert "site-packages" in labwright.__file__, labwright.__file__


def test_validate_and_quote(lab):
    v = lab.validate(EXAMPLES / "serial-dilution.yaml")
    assert v.tasks >= 2 and v.commands > 50
    q = lab.quote(EXAMPLES / "serial-dilution.yaml")
    assert q.total > 0 and q.currency and q.duration_s > 0
    assert q.validation.tasks == v.tasks
    assert {l["instrument_class"] for l in q.lines} >= {"liquid_handler"}
    # The plate and the tip racks it takes tips from are on the bill, in the total.
    items = {l["item"]: l for l in q.consumables}
    assert items["corning_96_wellplate_360ul_flat"]["unit"] == "each", q.consumables
    device = sum(l["amount"] for l in q.lines) + q.per_run
    assert abs(q.total - device - sum(l["amount"] for l in q.consumables)) < 0.011, q
    # Spot is cheaper and promised nothing; a standard quote is promised.
    spot = lab.quote(EXAMPLES / "serial-dilution.yaml", service_class="spot")
    assert (spot.service_class, q.service_class) == ("spot", "standard")
    assert spot.total < q.total and spot.promised_by_at_ms == 0 and q.promised_by_at_ms > 0, (spot, q)
    with pytest.raises(labwright.LabwrightError) as e:
        lab.quote(EXAMPLES / "serial-dilution.yaml", service_class="gold")
    assert "standard, priority or spot" in str(e.value)


def test_a_protocol_with_errors_raises_with_its_diagnostics(lab):
    broken = {"labwright": 1, "labware": {"p": {"type": "no_such_plate"}}, "steps": [{"tranfser": {}}]}
    with pytest.raises(ProtocolError) as e:
        lab.validate(broken)
    codes = [d.code for d in e.value.diagnostics if d.severity == "error"]
    assert codes, e.value.diagnostics
    assert all(d.line >= 1 for d in e.value.diagnostics)
    assert "error(s)" in str(e.value)
    with pytest.raises(ProtocolError):
        lab.submit(broken)


def test_a_run_from_submission_to_results(lab, dilution):
    assert dilution.state == "succeeded"
    events = list(dilution.events())
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "gapless"
    assert any(e["kind"] == "task_finished" for e in events)

    df = dilution.results()
    assert list(df.columns) == RESULT_COLUMNS
    assert len(df) == 96, "one row per well of the one 600 nm read"
    assert set(df["run"]) == {dilution.id} and set(df["protocol"]) == {dilution.name}
    assert set(df["kind"]) == {"absorbance"} and set(df["wavelength_nm"]) == {600.0}
    assert set(df["sample"].dropna()) == {"compound"}, "the plate map's names"
    a = df.set_index("well")
    assert a.loc["A1", "concentration"] == pytest.approx(5.0) and a.loc["A1", "concentration_unit"] == "mM"
    assert a.loc["A2", "concentration"] == pytest.approx(2.5), "factor 2 along the row"
    assert isinstance(df["read_at"].iloc[0], pd.Timestamp) and str(df["read_at"].dt.tz) == "UTC"

    plate = dilution.plate(0)
    assert plate.shape == (8, 12) and list(plate.index) == list("ABCDEFGH")
    assert plate.loc["A", 1] == pytest.approx(a.loc["A1", "value"])
    html = dilution._repr_html_()
    assert html.count("<td title=") == 96 and "sample compound" in html and "group series" in html

    again = lab.run(dilution.id)
    assert again.state == "succeeded" and again.name == dilution.name
    assert dilution.id in [r.id for r in lab.runs(["succeeded"])]


def test_a_protocol_as_a_dict(lab):
    tiny = {
        "labwright": 1,
        "name": "tiny transfer",
        "liquids": {"water": "water"},
        "labware": {
            "plate": {"type": "corning_96_wellplate_360ul_flat", "contents": {"A1": {"water": "100 uL"}}},
            "tips": {"type": "opentrons_96_tiprack_300ul"},
        },
        "steps": [{"transfer": {"from": "plate/A1", "to": "plate/A2", "volume": "50 uL"}}],
    }
    assert lab.validate(tiny).tasks == 1
    run = lab.submit(tiny).wait(progress=False)
    assert run.state == "succeeded" and run.name == "tiny transfer"
    assert run.results().empty and list(run.results().columns) == RESULT_COLUMNS


def test_live_events_over_mqtt(lab):
    mqtt = json.loads(os.environ["LABWRIGHT_MQTT"])
    with lab.subscribe(mqtt) as sub:
        run = lab.submit(EXAMPLES / "serial-dilution.yaml")
        events = list(sub.events(run.id))
    assert events[-1]["kind"] == "state" and events[-1]["data"]["state"] == "succeeded", events[-1]
    seqs = sorted({e["seq"] for e in events})
    assert seqs == list(range(1, len(seqs) + 1)), "every event, in a gapless sequence"
    assert {e["tenant"] for e in events} == {mqtt["topics"].split("/")[3]}
    assert [e["kind"] for e in run.events()] == [e["kind"] for e in sorted(events, key=lambda e: e["seq"])]


def test_errors_carry_the_labs_words(lab):
    with pytest.raises(LabwrightError) as e:
        lab.run("run_00000000000000000000000000")
    assert e.value.code == "NOT_FOUND"
    with pytest.raises(LabwrightError) as e:
        Lab(os.environ["LABWRIGHT_URL"], "lw_not_a_token").runs()
    assert e.value.code == "UNAUTHENTICATED"
    assert issubclass(RunFailed, LabwrightError)
