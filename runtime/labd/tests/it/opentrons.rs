//! Opentrons robots driven over their HTTP API by the executor: every liquid-handling command the
//! compiler emits runs on every robot of `sites/opentrons.toml` it may go to, and a serial
//! dilution is pipetted on the OT-2 and read on the reader.

use super::{contract_sources, heavy, root};
use std::sync::Arc;

const LIQUID_OPS: [&str; 5] = ["pick_up_tip", "aspirate", "dispense", "mix", "drop_tip"];

#[test]
fn the_contract_holds_on_opentrons_robots_over_http() {
    let _machine = heavy();
    let site =
        labware::Site::from_toml(&std::fs::read_to_string(root().join("sites/opentrons.toml")).unwrap()).unwrap();
    let mut sources = contract_sources();
    let dilution = std::fs::read_to_string(root().join("protocols/examples/serial-dilution.yaml")).unwrap();
    sources.push(("serial-dilution.yaml".into(), dilution));
    // A thermocycler's profile (holds one after the other): the OT-2's thermocycler.
    let head = &sources[0].1[..sources[0].1.find("steps:\n").unwrap() + 7];
    sources.push((
        "thermocycle.yaml".into(),
        format!("{head}  - thermocycle: {{ labware: plate, profile: [{{ temperature: 95 C, hold: 10 s }}, {{ cycles: 2, steps: [{{ temperature: 95 C, hold: 5 s }}, {{ temperature: 60 C, hold: 5 s }}] }}] }}\n"),
    ));
    // 1000 µL tips only: the Flex's pipettes.
    sources.push((
        "flex.yaml".into(),
        "labwright: 1\nname: flex\nliquids:\n  water: water\nlabware:\n  res:\n    type: nest_12_reservoir_15ml\n    contents:\n      A1: { water: 10 mL }\n  big: { type: opentrons_96_tiprack_1000ul }\nsteps:\n  - transfer: { from: res/A1, to: res/A2:A3, volume: 500 uL, mix_after: { times: 2, volume: 200 uL } }\n".into(),
    ));
    // This lab has no sealer or centrifuge: those snippets are refused at compile time. Its
    // heater-shaker is plugged into the Flex and its temperature module into the OT-2, both
    // driven through their robot's API.
    let (runs, claims) = super::contract_runs(&site, &sources, true);
    let on_module: Vec<&String> = claims.iter().filter(|(_, i)| i == "hs1").map(|(op, _)| op).collect();
    eprintln!("hs1 claims: {on_module:?}");
    assert!(on_module.iter().any(|op| *op == "shake"), "the Flex's heater-shaker never shakes: {claims:?}");
    assert!(
        claims.contains(&("incubate".to_string(), "temp1".to_string())),
        "the OT-2's temperature module never incubates: {claims:?}"
    );
    assert!(
        claims.contains(&("incubate".to_string(), "tc1".to_string())),
        "the OT-2's thermocycler never holds a profile's temperatures: {claims:?}"
    );
    for op in LIQUID_OPS {
        assert!(claims.contains(&(op.to_string(), "ot2".to_string())), "the OT-2 never gets `{op}`: {claims:?}");
    }
    for op in ["pick_up_tip", "aspirate", "dispense", "drop_tip"] {
        assert!(claims.contains(&(op.to_string(), "flex".to_string())), "the Flex never gets `{op}`: {claims:?}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use labd::executor::{Executor, ExecutorConfig};
        let scale = devices::TimeScale(0.0001);
        let store: Arc<dyn labd::store::Store> = Arc::new(labd::store::sqlite::SqliteStore::in_memory().unwrap());
        let lab = Arc::new(labd::lab::Lab::simulated(site.clone(), scale).await.unwrap());
        let sims = lab.simulated.as_ref().unwrap();
        assert_eq!(sims.opentrons.len(), 2, "both robots serve the HTTP API");
        let config =
            ExecutorConfig { scale, probe_every: std::time::Duration::from_millis(200), ..ExecutorConfig::default() };
        let ex = Arc::new(Executor::new(store.clone(), lab.clone(), config));
        let failed = super::carry_out_contract(store.clone(), ex, &runs).await;
        assert!(failed.is_empty(), "claimed by the compiler, refused or failed on a robot:\n{}", failed.join("\n"));
        for (id, sim) in &sims.opentrons {
            let s = sim.state.lock().unwrap();
            assert!(s.posted.len() > 20, "{id} was driven over HTTP ({} commands)", s.posted.len());
            assert!(s.mounts.values().all(|c| c.tips.iter().all(Option::is_none)), "{id} ends with no tip on");
        }
        // The dilution was read: the reader saw what the OT-2 pipetted.
        let dilution =
            store.runs(None, &[]).unwrap().into_iter().find(|r| r.name == "serial-dilution.yaml as compiled").unwrap();
        let results = store.results(None, &dilution.id).unwrap();
        assert!(!results.is_empty(), "the serial dilution has results");
        eprintln!("opentrons contract: {} runs, {} (command, robot) pairs", runs.len(), claims.len());
    });
}
