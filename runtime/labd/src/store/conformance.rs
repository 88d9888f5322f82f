//! The conformance suite every [`Store`] backend must pass. Each check takes a fresh, empty
//! store and panics (with a sentence saying what broke) when the backend misbehaves; backend tests
//! call [`run_all`].

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test suite: failing loudly is its job

use super::*;
use std::sync::Arc;

/// Runs every check, each on a fresh store from `make`.
pub fn run_all(make: &dyn Fn() -> Arc<dyn Store>) {
    tenants_and_principals(make().as_ref());
    submission_is_idempotent(make().as_ref());
    concurrent_submissions_make_one_run(make());
    events_are_gapless_and_tenant_scoped(make().as_ref());
    states_are_final_once_final(make().as_ref());
    a_held_run_goes_on_only_from_awaiting_recovery(make().as_ref());
    attempts_record_intent_before_outcome(make().as_ref());
    results_round_trip_with_their_event(make().as_ref());
    outbox_is_written_with_each_change(make().as_ref());
    interventions_resolve_once(make().as_ref());
    nothing_follows_a_final_state(make().as_ref());
    usage_and_reservations_sum_per_tenant(make().as_ref());
    task_durations_are_recorded_once_and_read_newest_first(make().as_ref());
    the_audit_trail_keeps_every_entry_newest_first(make().as_ref());
    maintenance_flags_and_token_expiry(make().as_ref());
    leases_claims_and_fencing(make().as_ref());
    containers_are_received_whole_and_kept_per_tenant(make().as_ref());
    declared_shipments_are_received_once_with_their_containers(make().as_ref());
    stock_is_taken_once_per_run_soonest_expiry_first(make().as_ref());
    runs_make_and_shelve_containers_once(make().as_ref());
    pick_lists_are_issued_once_and_confirmed_by_the_expected_barcode(make().as_ref());
}

/// A run's pick list is issued once (a second issue returns the first), read back in order,
/// and each item confirmed only by the barcode it expects, once, with who and when.
pub fn pick_lists_are_issued_once_and_confirmed_by_the_expected_barcode(s: &dyn Store) {
    let acme = s.create_tenant("acme", 1.0).unwrap();
    let run = submit(s, &acme.id, "k1");
    let item = |kind: &str, expected: &str| PickItem {
        run_id: run.id.clone(),
        n: 0,
        kind: kind.into(),
        what: format!("a {kind}"),
        from: "freezer-1".into(),
        to: "hotel".into(),
        expected: expected.into(),
        thaw_min: 30,
        confirmed_by: None,
        confirmed_at: None,
        volume_ul: if kind == "reagent" { 1_500.0 } else { 0.0 },
    };
    assert!(s.pick_list(&run.id).unwrap().is_empty());
    let list = s.issue_pick_list(&run.id, &[item("container", "ACME-1"), item("reagent", "LOT-9")]).unwrap();
    assert_eq!(list[1].volume_ul, 1_500.0);
    // The lot is held for this run while it has not ended, for any other run's list.
    assert_eq!(s.reserved_lots("run_other").unwrap(), [("LOT-9".to_string(), 1_500.0)]);
    assert!(s.reserved_lots(&run.id).unwrap().is_empty(), "not against its own list");
    assert_eq!(list.iter().map(|i| (i.n, i.expected.as_str())).collect::<Vec<_>>(), [(0, "ACME-1"), (1, "LOT-9")]);
    let again = s.issue_pick_list(&run.id, &[item("labware", "OTHER")]).unwrap();
    assert_eq!(again, list, "issued once: a restart gets the list it had");
    assert_eq!(s.open_picks().unwrap().len(), 2);
    let e = s.confirm_pick(&run.id, 1, "LOT-8", "tech-1").unwrap_err();
    assert!(matches!(&e, StoreError::Invalid(m) if m.contains("expects barcode `LOT-9`, not `LOT-8`")), "{e}");
    assert!(s.pick_list(&run.id).unwrap()[1].confirmed_at.is_none(), "a wrong scan confirms nothing");
    let done = s.confirm_pick(&run.id, 1, " LOT-9 ", "tech-1").unwrap();
    assert_eq!(done.confirmed_by.as_deref(), Some("tech-1"));
    let twice = s.confirm_pick(&run.id, 1, "LOT-9", "tech-2").unwrap();
    assert_eq!(
        (twice.confirmed_by, twice.confirmed_at),
        (done.confirmed_by, done.confirmed_at),
        "the first scan stands"
    );
    assert_eq!(s.open_picks().unwrap().iter().map(|i| i.n).collect::<Vec<_>>(), [0]);
    let batch = [(0, "ACME-1".to_string()), (1, "WRONG".to_string())];
    assert!(s.confirm_picks(&run.id, &batch, "sim").is_err(), "a batch with a wrong scan");
    assert!(s.pick_list(&run.id).unwrap()[0].confirmed_at.is_none(), "all or none");
    let batch = [(0, "ACME-1".to_string()), (1, "LOT-9".to_string())];
    assert_eq!(s.confirm_picks(&run.id, &batch, "sim").unwrap().len(), 2);
    assert!(s.open_picks().unwrap().is_empty());
    assert!(matches!(s.confirm_pick(&run.id, 7, "X", "t"), Err(StoreError::NotFound(_))));
    assert_eq!(s.reserved_lots("run_other").unwrap().len(), 1, "confirmed, the lot is still held until the run ends");
    s.set_run_state(&run.id, RunState::Running, None).unwrap();
    s.set_run_state(&run.id, RunState::Succeeded, None).unwrap();
    assert!(s.reserved_lots("run_other").unwrap().is_empty(), "an ended run's draw is off the stock itself");
}

/// A run's output becomes the tenant's container once, whatever the retries; a container is
/// stored or discarded once per run, with its history saying so.
pub fn runs_make_and_shelve_containers_once(s: &dyn Store) {
    let acme = s.create_tenant("acme", 1.0).unwrap();
    let one =
        |well: &str| WellContent { well: well.into(), sample: "S-1".into(), liquid: "serum".into(), volume_ul: 50.0 };
    let shipped = NewContainer {
        barcode: "PL-LINE".into(),
        load_name: "corning_96_wellplate_360ul_flat".into(),
        wells: vec![one("A1"), one("B1")],
        sources: Vec::new(),
    };
    let shipped = s.receive_containers(&acme.id, &[shipped], "bench", "tech", None).unwrap().remove(0);
    // Its A1 came from both wells of the plate shipped: lineage is kept with the container.
    let from = |w: &str| WellSource { well: "A1".into(), from_container: shipped.id.clone(), from_well: w.into() };
    let out = NewContainer {
        barcode: "abc123-assay".into(),
        load_name: "corning_96_wellplate_360ul_flat".into(),
        wells: vec![one("A1")],
        sources: vec![from("B1"), from("A1")],
    };
    let made = s.make_container("run_abc123", &acme.id, &out, "4C").unwrap().expect("made");
    assert!(s.make_container("run_abc123", &acme.id, &out, "4C").unwrap().is_none(), "once per run");
    assert!(s.make_container("run_other", &acme.id, &out, "4C").is_err(), "a barcode the lab holds");
    let k = s.container(Some(&acme.id), "abc123-assay").unwrap();
    assert_eq!((k.id.as_str(), k.location.as_str(), k.wells.len()), (made.id.as_str(), "4C", 1));
    assert_eq!(k.sources, [from("A1"), from("B1")], "by well, then source");
    let listed = s.containers(Some(&acme.id)).unwrap();
    assert_eq!(listed.iter().find(|c| c.id == k.id).map(|c| &c.sources), Some(&k.sources));
    assert!(listed.iter().find(|c| c.id == shipped.id).is_some_and(|c| c.sources.is_empty()));
    let history = s.container_history(&k.id).unwrap();
    assert_eq!(history[0].kind, "made");
    assert!(history[0].detail.starts_with("made by run run_abc123"), "{history:?}");
    // Positions: the lowest free one where a container is put, kept while it stays.
    assert_eq!((shipped.slot, made.slot, k.slot), (Some(1), Some(1), Some(1)), "the first at bench and at 4C");
    let second = NewContainer { barcode: "abc123-second".into(), ..out.clone() };
    let second = s.make_container("run_abc123", &acme.id, &second, "4C").unwrap().expect("made");
    assert_eq!(second.slot, Some(2), "the next free position at 4C");
    assert!(s.shelve_container("run_same", &second.id, Some("4C")).unwrap());
    assert_eq!(s.container(None, &second.id).unwrap().slot, Some(2), "stored back where it was: same position");
    assert!(s.shelve_container("run_next", &k.id, Some("-20C")).unwrap());
    assert!(!s.shelve_container("run_next", &k.id, Some("-20C")).unwrap(), "once per run");
    let moved = s.container(None, &k.id).unwrap();
    assert_eq!((moved.location.as_str(), moved.slot), ("-20C", Some(1)));
    let third = NewContainer { barcode: "abc123-third".into(), ..out.clone() };
    let third = s.make_container("run_abc123", &acme.id, &third, "4C").unwrap().expect("made");
    assert_eq!(third.slot, Some(1), "the position the moved one left is free again");
    assert!(s.shelve_container("run_last", &k.id, None).unwrap());
    let gone = s.container(None, &k.id).unwrap();
    assert_eq!((gone.location.as_str(), gone.slot), (DISCARDED, None));
    let moves: Vec<(String, Option<String>)> =
        s.container_history(&k.id).unwrap().into_iter().map(|h| (h.kind, h.location)).collect();
    assert_eq!(
        moves,
        [
            ("made".to_string(), Some("4C".to_string())),
            ("stored".to_string(), Some("-20C".to_string())),
            ("discarded".to_string(), Some(DISCARDED.to_string()))
        ],
        "each entry says where the container went"
    );
    assert!(s.shelve_container("run_last", "con_missing", None).is_err());
    // Every history in one read (the usage report's), a tenant's alone when asked.
    let globex = s.create_tenant("globex", 1.0).unwrap();
    let theirs = NewContainer { barcode: "def456-plate".into(), ..out };
    let other = s.make_container("run_def456", &globex.id, &theirs, "4C").unwrap().expect("made");
    let all = s.container_histories(None).unwrap();
    let mut expected = vec![
        (acme.id.clone(), shipped.id.clone(), s.container_history(&shipped.id).unwrap()),
        (acme.id.clone(), k.id.clone(), s.container_history(&k.id).unwrap()),
        (acme.id.clone(), second.id.clone(), s.container_history(&second.id).unwrap()),
        (acme.id.clone(), third.id.clone(), s.container_history(&third.id).unwrap()),
        (globex.id.clone(), other.id.clone(), s.container_history(&other.id).unwrap()),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(all, expected);
    let acme_only = s.container_histories(Some(&acme.id)).unwrap();
    let mut mine = vec![shipped.id.as_str(), k.id.as_str(), second.id.as_str(), third.id.as_str()];
    mine.sort();
    assert_eq!(acme_only.iter().map(|h| h.1.as_str()).collect::<Vec<_>>(), mine);
}

/// Reagents come off their unexpired lots, the soonest to expire first; counted consumables go
/// down; a run's use is recorded once, uncounted items too, and read back per tenant.
pub fn stock_is_taken_once_per_run_soonest_expiry_first(s: &dyn Store) {
    let acme = s.create_tenant("acme", 1.0).unwrap();
    let globex = s.create_tenant("globex", 1.0).unwrap();
    s.receive_lot("TMB substrate", "L-LATE", "2027-06-30", 50_000.0).unwrap();
    s.receive_lot("TMB substrate", "L-SOON", "2027-01-31", 5_000.0).unwrap();
    s.receive_lot("TMB substrate", "L-SOON", "2027-01-31", 3_000.0).unwrap(); // more of the lot
    s.receive_lot("TMB substrate", "L-OLD", "2026-11-30", 90_000.0).unwrap();
    assert!(s.receive_lot("TMB substrate", "L-X", "2027-02-30", 1.0).is_err(), "no such day");
    assert!(s.receive_lot("TMB substrate", "L-X", "2027-02-01", -1.0).is_err(), "a negative volume");
    s.set_consumable("opentrons_96_tiprack_300ul", 10, 8).unwrap();
    assert!(s.set_consumable("opentrons_96_tiprack_300ul", -1, 0).is_err());
    let used = protocols::consumables::Consumption {
        units: [("opentrons_96_tiprack_300ul".to_string(), 3), ("nest_12_reservoir_15ml".to_string(), 1)].into(),
        reagents_ul: [("TMB substrate".to_string(), 11_000.0)].into(),
    };
    let taken = s.consume("run_1", &acme.id, &used, "2026-12-06").unwrap();
    assert_eq!(taken.len(), 3, "{taken:?}");
    let tmb = taken.iter().find(|c| c.item == "TMB substrate").unwrap();
    assert_eq!((tmb.unit.as_str(), tmb.quantity, tmb.lots.as_str()), ("mL", 11.0, "L-SOON 8 mL, L-LATE 3 mL"));
    assert!(s.consume("run_1", &acme.id, &used, "2026-12-06").unwrap().is_empty(), "once per run");
    let (lots, counted) = s.stock().unwrap();
    let left: Vec<(&str, f64)> = lots.iter().map(|l| (l.lot.as_str(), l.volume_ul)).collect();
    assert_eq!(left, [("L-OLD", 90_000.0), ("L-SOON", 0.0), ("L-LATE", 47_000.0)], "the expired lot is not drawn");
    assert_eq!((counted.len(), counted[0].on_hand), (1, 7), "10 racks less 3; the reservoir is not counted");
    s.consume("run_2", &globex.id, &used, "2026-12-06").unwrap();
    assert_eq!(s.stock().unwrap().1[0].on_hand, 4);
    let mine = s.consumed(Some(&acme.id), 0).unwrap();
    assert_eq!(mine.len(), 3);
    assert!(mine.iter().all(|c| c.run_id == "run_1" && c.tenant_id == acme.id));
    assert_eq!(s.consumed(None, 0).unwrap().len(), 6);
}

/// A shipment is received whole or not at all; a barcode is the lab's, whoever holds it; a
/// tenant sees its own containers only, and another's reads exactly like a missing one.
pub fn containers_are_received_whole_and_kept_per_tenant(s: &dyn Store) {
    let acme = s.create_tenant("acme", 1.0).unwrap();
    let globex = s.create_tenant("globex", 1.0).unwrap();
    let well = |w: &str, sample: &str, ul: f64| WellContent {
        well: w.into(),
        sample: sample.into(),
        liquid: "serum".into(),
        volume_ul: ul,
    };
    let plate = NewContainer {
        barcode: "PL-0001".into(),
        load_name: "corning_96_wellplate_360ul_flat".into(),
        wells: vec![well("B1", "S-2", 80.0), well("A2", "S-3", 90.0), well("A1", "S-1", 100.0)],
        sources: Vec::new(),
    };
    let got = s.receive_containers(&acme.id, std::slice::from_ref(&plate), "cold_4", "tech-1", None).unwrap();
    assert_eq!(got.len(), 1);
    let k = s.container(Some(&acme.id), "PL-0001").unwrap();
    assert_eq!((k.id.as_str(), k.location.as_str()), (got[0].id.as_str(), "cold_4"));
    let order: Vec<&str> = k.wells.iter().map(|w| w.well.as_str()).collect();
    assert_eq!(order, ["A1", "A2", "B1"], "wells row by row");
    assert_eq!(s.container(None, &k.id).unwrap().barcode, "PL-0001", "by id, for staff");
    let history = s.container_history(&k.id).unwrap();
    assert_eq!((history.len(), history[0].kind.as_str(), history[0].actor.as_str()), (1, "received", "tech-1"));
    // Another tenant: the same answer as for a container that does not exist.
    let theirs = s.container(Some(&globex.id), "PL-0001").unwrap_err().to_string();
    let nobody = s.container(Some(&globex.id), "PL-9999").unwrap_err().to_string();
    assert_eq!(theirs.replace("PL-0001", "X"), nobody.replace("PL-9999", "X"), "{theirs} / {nobody}");
    assert!(s.containers(Some(&globex.id)).unwrap().is_empty());
    // A second shipment reusing a barcode is refused whole.
    let fresh = NewContainer { barcode: "PL-0002".into(), ..plate.clone() };
    let again = s.receive_containers(&globex.id, &[fresh, plate], "ambient", "tech-1", None).unwrap_err();
    assert!(matches!(&again, StoreError::Conflict(m) if m.contains("PL-0001")), "{again}");
    assert!(matches!(s.container(None, "PL-0002"), Err(StoreError::NotFound(_))), "nothing half-received");
    assert_eq!(s.containers(None).unwrap().len(), 1);
    // A run's draws come off the wells once, in proportion to what each well holds.
    assert!(s.use_container("run_1", &k.id, &[("A1".into(), 25.0)], "labd").unwrap());
    assert!(!s.use_container("run_1", &k.id, &[("A1".into(), 25.0)], "labd").unwrap(), "once per run");
    let after = s.container(None, &k.id).unwrap();
    assert_eq!(after.wells.iter().find(|w| w.well == "A1").unwrap().volume_ul, 75.0);
    assert_eq!(after.wells.iter().find(|w| w.well == "B1").unwrap().volume_ul, 80.0, "untouched");
    let history = s.container_history(&k.id).unwrap();
    assert_eq!((history.len(), history[1].kind.as_str()), (2, "used"));
    assert_eq!(history[1].detail, "run run_1: drew A1 25 µL");
}

/// A tenant declares a shipment; it is listed (its own tenant's only) until received, and
/// receiving it makes its containers and marks it received in one step, once.
pub fn declared_shipments_are_received_once_with_their_containers(s: &dyn Store) {
    let acme = s.create_tenant("acme", 1.0).unwrap();
    let globex = s.create_tenant("globex", 1.0).unwrap();
    let manifest =
        "barcode,type,well,sample,liquid,volume\nPL-0001,corning_96_wellplate_360ul_flat,A1,S-1,serum,100 uL\n";
    let plate = NewContainer {
        barcode: "PL-0001".into(),
        load_name: "corning_96_wellplate_360ul_flat".into(),
        wells: vec![WellContent { well: "A1".into(), sample: "S-1".into(), liquid: "serum".into(), volume_ul: 100.0 }],
        sources: Vec::new(),
    };
    let declared = s.declare_shipment(&acme.id, manifest, &["PL-0001".into()], "scientist-1").unwrap();
    assert_eq!((declared.barcodes.as_slice(), declared.received.as_ref()), (&["PL-0001".to_string()][..], None));
    let again = s.declare_shipment(&acme.id, manifest, &["PL-0001".into()], "scientist-1").unwrap_err();
    assert!(matches!(&again, StoreError::Conflict(m) if m.contains(&declared.id)), "{again}");
    // globex may declare the same barcode: whether acme's shipment holds it is not globex's to learn.
    let theirs = s.declare_shipment(&globex.id, manifest, &["PL-0001".into()], "scientist-2").unwrap();
    let open = s.open_shipments(None).unwrap();
    assert!(open.windows(2).all(|w| w[0].declared_at <= w[1].declared_at), "oldest first");
    let mut ids: Vec<String> = open.into_iter().map(|x| x.id).collect();
    ids.sort();
    let mut both = [declared.id.clone(), theirs.id.clone()];
    both.sort();
    assert_eq!(ids, both);
    assert_eq!(s.open_shipments(Some(&acme.id)).unwrap().len(), 1);
    assert_eq!(s.shipment(Some(&acme.id), &declared.id).unwrap().manifest, manifest);
    let hidden = s.shipment(Some(&globex.id), &declared.id).unwrap_err().to_string();
    let missing = s.shipment(Some(&globex.id), "shp_nothing").unwrap_err().to_string();
    assert_eq!(hidden.replace(&declared.id, "X"), missing.replace("shp_nothing", "X"));
    // Received by the wrong tenant's id: not found, and nothing is made.
    let wrong = s.receive_containers(&globex.id, std::slice::from_ref(&plate), "bench", "tech", Some(&declared.id));
    assert!(matches!(wrong, Err(StoreError::NotFound(_))), "{wrong:?}");
    assert!(s.containers(None).unwrap().is_empty(), "nothing half received");
    s.receive_containers(&acme.id, std::slice::from_ref(&plate), "bench", "tech", Some(&declared.id)).unwrap();
    let got = s.shipment(None, &declared.id).unwrap();
    assert_eq!(got.received.map(|(_, by)| by).as_deref(), Some("tech"));
    assert_eq!(s.open_shipments(None).unwrap().len(), 1, "globex's is still open");
    // Twice: refused, and nothing more is made (the barcode would clash anyway; a new one shows
    // it is the shipment that refuses).
    let other = NewContainer { barcode: "PL-0002".into(), ..plate };
    let twice = s.receive_containers(&acme.id, &[other], "bench", "tech", Some(&declared.id)).unwrap_err();
    assert!(matches!(&twice, StoreError::Conflict(m) if m.contains("received already")), "{twice}");
    assert_eq!(s.containers(None).unwrap().len(), 1);
    // Once received, its barcodes are the tenant's containers: declaring one again is refused.
    let held = s.declare_shipment(&acme.id, manifest, &["PL-0001".into()], "scientist-1").unwrap_err();
    assert!(matches!(&held, StoreError::Conflict(m) if m.contains("your containers")), "{held}");
}

/// A run's final state is the last thing in its history: its open interventions close with it
/// (and say so before the state event), and a later event or resolution is a conflict.
pub fn nothing_follows_a_final_state(s: &dyn Store) {
    let t = s.create_tenant("ender", 1.0).unwrap();
    let run = submit(s, &t.id, "end-1");
    s.set_run_state(&run.id, RunState::Running, None).unwrap();
    let i = s.open_intervention(&run.id, Some(3), None, "manual step", "add the dye").unwrap();
    let check = s.open_intervention(&run.id, Some(2), Some("lh1"), "labd restarted", "check lh1").unwrap();
    let last = s.set_run_state(&run.id, RunState::Failed, Some("restarted mid-run")).unwrap();
    let events = s.events(None, &run.id, 0).unwrap();
    let tail: Vec<&str> = events.iter().rev().take(2).map(|e| e.kind.as_str()).collect();
    assert_eq!(tail, ["state", "intervention_resolved"], "closed, then the final state: {events:?}");
    assert_eq!(events.last().unwrap().seq, last.seq);
    let closed = s.interventions(None, false).unwrap().into_iter().find(|x| x.id == i.id).unwrap();
    assert_eq!(closed.state, "closed");
    let open: Vec<String> = s.interventions(None, true).unwrap().into_iter().map(|x| x.id).collect();
    assert_eq!(open, std::slice::from_ref(&check.id), "the manual step closed; the instrument check stays open");
    assert!(matches!(s.resolve_intervention(&i.id, "done", "tech"), Err(StoreError::Conflict(_))));
    // The instrument check is resolved after the run's end: recorded, not added to its history.
    assert_eq!(s.resolve_intervention(&check.id, "done", "tech").unwrap().state, "done");
    assert!(matches!(s.append_event(&run.id, "task_finished", "{}"), Err(StoreError::Conflict(_))));
    assert!(matches!(s.open_intervention(&run.id, None, None, "manual step", "late"), Err(StoreError::Conflict(_))));
    assert_eq!(s.events(None, &run.id, 0).unwrap().len(), events.len(), "nothing was appended");
}

/// Cells: one holder per lease, epochs grow, a claim is won once, and a fenced store's writes
/// are refused once its lease ran out or was taken over.
pub fn leases_claims_and_fencing(s: &dyn Store) {
    let a = s.acquire_lease("cell-a", "node1", 60_000).unwrap().expect("a free cell is taken");
    assert_eq!((a.epoch, a.holder.as_str()), (1, "node1"));
    assert!(s.acquire_lease("cell-a", "node2", 60_000).unwrap().is_none(), "a live lease is not taken");
    let renewed = s.renew_lease(&a, 60_000).unwrap().expect("the holder renews");
    assert!(renewed.expires_at >= a.expires_at);

    let t = s.create_tenant("t", 1.0).unwrap();
    let run = submit(s, &t.id, "k");
    let fenced = s.fenced(&a);
    assert!(fenced.claim_run(&run.id, "cell-a").unwrap());
    assert!(!s.claim_run(&run.id, "cell-b").unwrap(), "a claimed run is not claimed again");
    assert_eq!(s.run(None, &run.id).unwrap().cell.as_deref(), Some("cell-a"));
    assert_eq!(s.cell_loads().unwrap(), [("cell-a".to_string(), 1)]);
    assert_eq!(s.events(None, &run.id, 0).unwrap().last().unwrap().kind, "placed");
    fenced.append_event(&run.id, "progress", "{}").unwrap();

    // The lease runs out (a paused node): a standby takes over with a higher epoch.
    s.release_lease(&a).unwrap();
    let b = s.acquire_lease("cell-a", "node2", 60_000).unwrap().expect("a released lease is free");
    assert_eq!(b.epoch, 2);
    let late = fenced.append_event(&run.id, "progress", "{}").unwrap_err();
    assert!(matches!(late, StoreError::Fenced(_)), "a late write is refused: {late:?}");
    assert!(s.renew_lease(&a, 60_000).unwrap().is_none(), "the old holder learns it lost the lease");
    s.fenced(&b).append_event(&run.id, "progress", "{}").unwrap();
    let kinds = s.events(None, &run.id, 0).unwrap().iter().filter(|e| e.kind == "progress").count();
    assert_eq!(kinds, 2, "the late write left no trace");
    assert_eq!(s.leases().unwrap(), [b]);
}

fn maintenance_flags_and_token_expiry(s: &dyn Store) {
    assert!(s.maintenance().unwrap().is_empty());
    s.set_maintenance("reader1", Some(("lamp", "tech"))).unwrap();
    s.set_maintenance("lh2", Some(("calibration", "tech"))).unwrap();
    s.set_maintenance("reader1", Some(("lamp and filter", "tech2"))).unwrap();
    let m = s.maintenance().unwrap();
    assert_eq!(m.iter().map(|x| x.instrument.as_str()).collect::<Vec<_>>(), ["lh2", "reader1"]);
    assert_eq!((m[1].reason.as_str(), m[1].set_by.as_str()), ("lamp and filter", "tech2"));
    s.set_maintenance("reader1", None).unwrap();
    s.set_maintenance("reader1", None).unwrap(); // clearing twice is harmless
    assert_eq!(s.maintenance().unwrap().len(), 1);

    let p = s.create_principal(None, Role::Technician, "hash-exp", Some(("lw-tech", "$7$hash"))).unwrap();
    let ids = s.mqtt_identities().unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!((ids[0].username.as_str(), ids[0].password_hash.as_str()), ("lw-tech", "$7$hash"));
    assert_eq!(s.principal_by_token_hash("hash-exp").unwrap().expires_at, None);
    s.set_principal_expiry(&p.id, 1234).unwrap();
    assert_eq!(s.principal_by_token_hash("hash-exp").unwrap().expires_at, Some(1234));
    assert!(matches!(s.set_principal_expiry("pri_nope", 1), Err(StoreError::NotFound(_))));
    assert!(s.mqtt_identities().unwrap().is_empty(), "an expired principal's MQTT identity is gone too");
}

fn plan() -> String {
    r#"{"version":1,"protocol":"t","labware":[],"tasks":[],"max_lags":[]}"#.into()
}

/// Submits a small run for `tenant` under idempotency key `key`.
pub fn submit(s: &dyn Store, tenant: &str, key: &str) -> Run {
    s.submit_run(&NewRun {
        tenant_id: tenant.into(),
        idempotency_key: key.into(),
        name: "test".into(),
        source: format!("source {key}"),
        plan_json: plan(),
        priority: 0,
        class: Default::default(),
    })
    .expect("submit")
    .0
}

pub fn tenants_and_principals(s: &dyn Store) {
    let a = s.create_tenant("acme", 2.0).unwrap();
    assert_eq!(s.tenant(&a.id).unwrap(), a, "a tenant reads back as written");
    assert_eq!(s.tenant_by_name("acme").unwrap().id, a.id);
    assert!(matches!(s.create_tenant("acme", 1.0), Err(StoreError::Conflict(_))), "tenant names are unique");
    assert!(matches!(s.create_tenant("bad name", 1.0), Err(StoreError::Invalid(_))), "names go into MQTT topics");
    assert!(matches!(s.create_tenant("zero", 0.0), Err(StoreError::Invalid(_))));
    assert!(matches!(s.create_tenant(&"a".repeat(65), 1.0), Err(StoreError::Invalid(_))), "names are short");
    s.set_quotas(&a.id, Some(3), Some(100.0), 5).unwrap();
    let q = s.tenant(&a.id).unwrap();
    assert_eq!((q.max_concurrent_runs, q.device_hours_per_month, q.priority), (Some(3), Some(100.0), 5));
    let p = s.create_principal(Some(&a.id), Role::Scientist, "hash-1", Some(("acme-1", "mqtt-hash"))).unwrap();
    assert_eq!(s.principal_by_token_hash("hash-1").unwrap(), p);
    assert!(matches!(s.principal_by_token_hash("hash-2"), Err(StoreError::NotFound(_))));
    assert!(s.create_principal(None, Role::Scientist, "hash-3", None).is_err(), "a scientist needs a tenant");
    assert!(
        matches!(s.create_principal(None, Role::Admin, "hash-1", None), Err(StoreError::Conflict(_))),
        "token hashes are unique"
    );
    s.revoke_principal(&p.id).unwrap();
    assert!(s.principal_by_token_hash("hash-1").is_err(), "a revoked token no longer authenticates");
    assert_eq!(s.tenants().unwrap().len(), 1);
}

pub fn submission_is_idempotent(s: &dyn Store) {
    let t = s.create_tenant("t1", 1.0).unwrap();
    let submission = NewRun {
        tenant_id: t.id.clone(),
        idempotency_key: "k".into(),
        name: "n".into(),
        source: "x".into(),
        plan_json: plan(),
        priority: 0,
        class: Default::default(),
    };
    let first = s.submit_run(&submission).unwrap();
    assert!(first.1, "the first submission creates a run");
    assert_eq!(first.0.state, RunState::Queued);
    let again = s.submit_run(&submission).unwrap();
    assert_eq!((again.0.id.as_str(), again.1), (first.0.id.as_str(), false), "a retry returns the same run");
    let other = s
        .submit_run(&NewRun {
            tenant_id: t.id.clone(),
            idempotency_key: "k".into(),
            name: "n".into(),
            source: "different".into(),
            plan_json: plan(),
            priority: 0,
            class: Default::default(),
        })
        .unwrap_err();
    assert!(matches!(other, StoreError::Conflict(_)), "a reused key with different content is refused");
    let spot = NewRun { class: labware::ServiceClass::Spot, ..submission.clone() };
    let other_class = s.submit_run(&spot).unwrap_err();
    assert!(matches!(other_class, StoreError::Conflict(_)), "a reused key in another class is refused");
    let spot = s.submit_run(&NewRun { idempotency_key: "k-spot".into(), ..spot }).unwrap().0;
    assert_eq!(s.run(None, &spot.id).unwrap().class, labware::ServiceClass::Spot, "the class is kept");
    assert_eq!(s.run(None, &first.0.id).unwrap().class, labware::ServiceClass::Standard);
    let u = s.create_tenant("t2", 1.0).unwrap();
    let theirs = submit(s, &u.id, "k");
    assert_ne!(theirs.id, first.0.id, "keys are per tenant");
    assert_eq!(s.runs(Some(&t.id), &[]).unwrap().len(), 2);
    assert_eq!(s.runs(None, &[RunState::Queued]).unwrap().len(), 3);
    // Its plan may change until it starts (kitting added at admission), then never.
    assert!(s.set_plan(&theirs.id, "{\"kitted\":1}").unwrap());
    assert_eq!(s.run(None, &theirs.id).unwrap().plan_json, "{\"kitted\":1}");
    s.set_run_state(&theirs.id, RunState::Running, None).unwrap();
    assert!(!s.set_plan(&theirs.id, "{}").unwrap(), "a started run keeps its plan");
    assert_eq!(s.run(None, &theirs.id).unwrap().plan_json, "{\"kitted\":1}");
}

pub fn concurrent_submissions_make_one_run(s: Arc<dyn Store>) {
    let t = s.create_tenant("racer", 1.0).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            let tid = t.id.clone();
            std::thread::spawn(move || submit(s.as_ref(), &tid, "same-key").id)
        })
        .collect();
    let ids: std::collections::BTreeSet<String> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    assert_eq!(ids.len(), 1, "eight concurrent retries made {} runs", ids.len());
}

pub fn events_are_gapless_and_tenant_scoped(s: &dyn Store) {
    let a = s.create_tenant("a", 1.0).unwrap();
    let b = s.create_tenant("b", 1.0).unwrap();
    let r = submit(s, &a.id, "1");
    for i in 0..20 {
        s.append_event(&r.id, "progress", &format!("{{\"i\":{i}}}")).unwrap();
    }
    let all = s.events(Some(&a.id), &r.id, 0).unwrap();
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=21).collect::<Vec<_>>(), "sequence numbers are 1..n without gaps");
    assert_eq!(all[0].kind, "submitted");
    assert_eq!(s.events(Some(&a.id), &r.id, 15).unwrap().len(), 6, "a client catching up gets the rest");
    assert!(matches!(s.events(Some(&b.id), &r.id, 0), Err(StoreError::NotFound(_))), "another tenant sees nothing");
    assert!(matches!(s.run(Some(&b.id), &r.id), Err(StoreError::NotFound(_))), "not even that the run exists");
    assert!(s.append_event(&r.id, "x", "not json").is_err());
    assert!(matches!(s.append_event("run_missing", "x", "{}"), Err(StoreError::NotFound(_))));
}

pub fn states_are_final_once_final(s: &dyn Store) {
    let t = s.create_tenant("t", 1.0).unwrap();
    let r = submit(s, &t.id, "1");
    s.set_run_state(&r.id, RunState::Running, None).unwrap();
    let running = s.run(None, &r.id).unwrap();
    assert!(running.started_at.is_some());
    s.set_run_state(&r.id, RunState::Failed, Some("reader down")).unwrap();
    let done = s.run(None, &r.id).unwrap();
    assert_eq!((done.state, done.reason.as_deref()), (RunState::Failed, Some("reader down")));
    assert!(done.finished_at.is_some());
    assert!(matches!(s.set_run_state(&r.id, RunState::Running, None), Err(StoreError::Conflict(_))), "final is final");
    let kinds: Vec<String> = s.events(None, &r.id, 0).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec!["submitted", "state", "state"]);
}

/// Holding for recovery moves only a running run, and releasing only a held one: a cancel that
/// lands meanwhile is never undone.
pub fn a_held_run_goes_on_only_from_awaiting_recovery(s: &dyn Store) {
    let t = s.create_tenant("t", 1.0).unwrap();
    let r = submit(s, &t.id, "1");
    assert!(s.hold_run(&r.id, true, Some("stop")).unwrap().is_none(), "a queued run is not held");
    s.set_run_state(&r.id, RunState::Running, None).unwrap();
    assert!(s.hold_run(&r.id, true, Some("emergency stop by tech-1")).unwrap().is_some());
    let held = s.run(None, &r.id).unwrap();
    assert_eq!((held.state, held.reason.as_deref()), (RunState::AwaitingRecovery, Some("emergency stop by tech-1")));
    assert!(s.runs(None, &[RunState::AwaitingRecovery]).unwrap().iter().any(|x| x.id == r.id));
    assert!(s.hold_run(&r.id, false, Some("redo")).unwrap().is_some());
    assert_eq!(s.run(None, &r.id).unwrap().state, RunState::Running);
    s.hold_run(&r.id, true, None).unwrap();
    s.set_run_state(&r.id, RunState::Cancelling, Some("cancelled by tenant")).unwrap();
    assert!(s.hold_run(&r.id, false, None).unwrap().is_none(), "a cancel is not undone by a release");
    assert_eq!(s.run(None, &r.id).unwrap().state, RunState::Cancelling);
    let states: Vec<String> = s
        .events(None, &r.id, 0)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "state")
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.payload_json).unwrap()["state"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(states, ["running", "awaiting_recovery", "running", "awaiting_recovery", "cancelling"]);
}

pub fn attempts_record_intent_before_outcome(s: &dyn Store) {
    let t = s.create_tenant("t", 1.0).unwrap();
    let r = submit(s, &t.id, "1");
    let intent = Intent {
        run_id: r.id.clone(),
        task_id: 0,
        command_index: 3,
        instrument: "lh1".into(),
        op_json: "{\"op\":\"dispense\"}".into(),
        repeatable: false,
    };
    let a = s.record_intent(&intent).unwrap();
    let b = s.record_intent(&Intent { command_index: 4, repeatable: true, ..intent.clone() }).unwrap();
    assert_eq!(s.open_attempts().unwrap().len(), 2, "in-flight commands are visible after a crash");
    s.record_outcome(&a.id, "ok", None).unwrap();
    assert!(
        matches!(s.record_outcome(&a.id, "failed", None), Err(StoreError::Conflict(_))),
        "an outcome is written once"
    );
    assert!(s.record_outcome(&b.id, "maybe", None).is_err());
    let open = s.open_attempts().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].intent, Intent { command_index: 4, repeatable: true, ..intent.clone() });
    assert_eq!(s.attempts(&r.id).unwrap().len(), 2);

    // The previous success and the next intent in one write; all or nothing.
    let c = s.record_ok_then_intent(Some(&b.id), &Intent { command_index: 5, ..intent.clone() }).unwrap();
    let all = s.attempts(&r.id).unwrap();
    assert_eq!(all.iter().find(|x| x.id == b.id).unwrap().outcome.as_deref(), Some("ok"));
    assert_eq!(s.open_attempts().unwrap().iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), [c.id.as_str()]);
    let again = s.record_ok_then_intent(Some(&b.id), &Intent { command_index: 6, ..intent });
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(s.attempts(&r.id).unwrap().len(), 3, "the refused write added no intent");

    // Recovery: a command that never happened, and where an instrument's last command was.
    s.record_outcome(&c.id, "not_done", Some("settled at recovery")).unwrap();
    assert!(s.open_attempts().unwrap().is_empty());
    let last = s.last_done_on("lh1", now_ms()).unwrap().expect("lh1 did something");
    assert!(last.id == b.id || (last.id == a.id && a.intent_at == b.intent_at), "the last that went through");
    assert_ne!(last.id, c.id, "not one that never happened");
    assert_eq!(s.last_done_on("lh1", a.intent_at - 1).unwrap(), None, "nothing before the first");
    assert_eq!(s.last_done_on("arm1", now_ms()).unwrap(), None);
}

pub fn results_round_trip_with_their_event(s: &dyn Store) {
    let t = s.create_tenant("t", 1.0).unwrap();
    let other = s.create_tenant("o", 1.0).unwrap();
    let r = submit(s, &t.id, "1");
    let row = ResultRow {
        id: new_id("res"),
        run_id: r.id.clone(),
        task_id: 2,
        labware: "plate".into(),
        kind: "absorbance".into(),
        wells: vec!["A1".into(), "B1".into()],
        wavelengths_nm: vec![450.0, 600.0],
        values: vec![0.1, 0.2, 0.3, 0.4],
        unit: "OD".into(),
        created_at: now_ms(),
    };
    let ev = s.add_result(&row).unwrap();
    assert_eq!(ev.kind, "result");
    assert_eq!(s.results(Some(&t.id), &r.id).unwrap(), vec![row.clone()], "values come back exactly");
    assert!(s.results(Some(&other.id), &r.id).is_err());
    assert!(matches!(
        s.add_result(&ResultRow { id: new_id("res"), values: vec![1.0], ..row }),
        Err(StoreError::Invalid(_))
    ));
}

pub fn outbox_is_written_with_each_change(s: &dyn Store) {
    let t = s.create_tenant("t", 1.0).unwrap();
    let r = submit(s, &t.id, "1");
    s.set_run_state(&r.id, RunState::Running, None).unwrap();
    let rows = s.outbox_pending(100).unwrap();
    // submitted event; state event; retained state message.
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.windows(2).all(|w| w[0].position < w[1].position), "oldest first");
    assert!(rows.iter().all(|o| o.topic.starts_with(&format!("lab/v1/t/{}/runs/{}/", t.id, r.id))));
    let env: serde_json::Value = serde_json::from_str(&rows[0].payload_json).unwrap();
    assert_eq!((env["v"].as_i64(), env["seq"].as_i64(), env["kind"].as_str()), (Some(1), Some(1), Some("submitted")));
    s.outbox_mark_sent(&[rows[0].id.clone()]).unwrap();
    assert_eq!(s.outbox_pending(100).unwrap().len(), 2);
    s.outbox_put(&crate::telemetry::envelope::device_status("sim", "lh1", "available", "", 1)).unwrap();
    assert_eq!(s.outbox_pending(100).unwrap().len(), 3);
    assert_eq!(s.outbox_pending(1).unwrap().len(), 1);
}

pub fn interventions_resolve_once(s: &dyn Store) {
    let t = s.create_tenant("t", 1.0).unwrap();
    let o = s.create_tenant("o", 1.0).unwrap();
    let r = submit(s, &t.id, "1");
    let i = s
        .open_intervention(
            &r.id,
            Some(0),
            Some("lh1"),
            "dispense timed out",
            "check plate A1 and say whether the dispense happened",
        )
        .unwrap();
    assert_eq!(s.interventions(None, true).unwrap().len(), 1);
    assert_eq!(s.interventions(Some(&o.id), false).unwrap().len(), 0, "other tenants do not see it");
    let done = s.resolve_intervention(&i.id, "redo", "tech-1").unwrap();
    assert_eq!((done.state.as_str(), done.resolved_by.as_deref()), ("redo", Some("tech-1")));
    assert!(matches!(s.resolve_intervention(&i.id, "done", "tech-2"), Err(StoreError::Conflict(_))), "resolved once");
    assert!(s.resolve_intervention(&i.id, "later", "t").is_err());
    assert_eq!(s.interventions(None, true).unwrap().len(), 0);
    assert_eq!(s.intervention(&i.id).unwrap(), done, "one by id, as resolved");
    assert!(matches!(s.intervention("int_none"), Err(StoreError::NotFound(_))));
    let kinds: Vec<String> = s.events(None, &r.id, 0).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec!["submitted", "intervention", "intervention_resolved"]);
}

pub fn usage_and_reservations_sum_per_tenant(s: &dyn Store) {
    let a = s.create_tenant("a", 1.0).unwrap();
    let b = s.create_tenant("b", 1.0).unwrap();
    let ra = submit(s, &a.id, "1");
    let rb = submit(s, &b.id, "1");
    for (t, r, class, secs) in [
        (&a, &ra, "liquid_handler", 100.0),
        (&a, &ra, "liquid_handler", 50.0),
        (&a, &ra, "plate_reader", 20.0),
        (&b, &rb, "liquid_handler", 7.0),
    ] {
        s.add_usage(&Usage {
            tenant_id: t.id.clone(),
            run_id: r.id.clone(),
            instrument_class: class.into(),
            instrument: "x".into(),
            device_seconds: secs,
        })
        .unwrap();
    }
    let ua = s.usage(Some(&a.id), 0).unwrap();
    assert_eq!(ua.len(), 2);
    assert_eq!(ua[0].device_seconds, 150.0);
    assert_eq!(s.usage(None, 0).unwrap().len(), 3);
    assert!(s.usage(None, now_ms() + 60_000).unwrap().is_empty(), "`since` filters");
    assert!(s
        .add_usage(&Usage {
            tenant_id: a.id.clone(),
            run_id: ra.id.clone(),
            instrument_class: "x".into(),
            instrument: "x".into(),
            device_seconds: f64::NAN
        })
        .is_err());
    let res = Reservation {
        id: new_id("rsv"),
        tenant_id: a.id.clone(),
        instrument_class: "plate_reader".into(),
        starts_at: 1000,
        ends_at: 2000,
    };
    s.add_reservation(&res).unwrap();
    assert!(s.add_reservation(&Reservation { id: new_id("rsv"), ends_at: 500, ..res.clone() }).is_err());
    assert_eq!(s.reservations(Some(&a.id)).unwrap(), vec![res]);
    assert!(s.reservations(Some(&b.id)).unwrap().is_empty());
}

pub fn task_durations_are_recorded_once_and_read_newest_first(s: &dyn Store) {
    use crate::experience::TaskDuration;
    let a = s.create_tenant("a", 1.0).unwrap();
    let r = submit(s, &a.id, "1");
    let d = |task_id: i64, actual_s: f64, at: i64| TaskDuration {
        run_id: r.id.clone(),
        task_id,
        instrument: "reader1".into(),
        class: "plate_reader".into(),
        kind: "read_absorbance".into(),
        estimated_s: 20.0,
        actual_s,
        at,
    };
    assert!(s.record_duration(&d(0, 25.0, 1000)).unwrap());
    assert!(s.record_duration(&d(1, 30.0, 2000)).unwrap());
    // The same task again (a restart after the task finished): not counted twice, first kept.
    assert!(!s.record_duration(&d(1, 99.0, 3000)).unwrap());
    assert_eq!(s.task_durations(10).unwrap(), vec![d(1, 30.0, 2000), d(0, 25.0, 1000)]);
    assert_eq!(s.task_durations(1).unwrap(), vec![d(1, 30.0, 2000)]);
    assert!(matches!(s.record_duration(&d(2, f64::NAN, 4000)), Err(StoreError::Invalid(_))));
}

pub fn the_audit_trail_keeps_every_entry_newest_first(s: &dyn Store) {
    assert!(s.audit(0, 10).unwrap().is_empty());
    let entry = |action: &str, reason: &str| NewAudit {
        actor: "prn_tech".into(),
        action: action.into(),
        subject: "reader1".into(),
        reason: reason.into(),
        detail: String::new(),
    };
    // Written back to back, most in the same millisecond: read back newest first all the same.
    let on = s.record_audit(&entry("maintenance_on", "lamp")).unwrap();
    let off = s.record_audit(&entry("maintenance_off", "")).unwrap();
    assert!(off.at >= on.at && off.id != on.id);
    let all = s.audit(0, 10).unwrap();
    assert_eq!(all.iter().map(|e| e.done.action.as_str()).collect::<Vec<_>>(), ["maintenance_off", "maintenance_on"]);
    assert_eq!(all[1].done, entry("maintenance_on", "lamp"), "kept as given");
    let burst: Vec<String> =
        (0..8).map(|i| s.record_audit(&entry(&format!("step_{i}"), "")).unwrap().done.action).collect();
    let back: Vec<String> = s.audit(0, 8).unwrap().into_iter().map(|e| e.done.action).collect();
    assert_eq!(back, burst.into_iter().rev().collect::<Vec<_>>(), "newest first within a millisecond");
    assert_eq!(s.audit(0, 1).unwrap().len(), 1, "the limit holds");
    let last = s.audit(0, 1).unwrap()[0].at;
    assert_eq!(s.audit(last + 1, 10).unwrap().len(), 0, "nothing after the last");
    assert!(s.record_audit(&NewAudit { actor: " ".into(), ..entry("x", "") }).is_err(), "who did it is required");
}
