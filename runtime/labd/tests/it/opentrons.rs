//! Opentrons robots driven over their HTTP API by the executor: every liquid-handling command the
//! compiler emits runs on every robot of `sites/opentrons.toml` it may go to, and a serial
//! dilution is pipetted on the OT-2 and read on the reader.

use super::{contract_sources, heavy, root};
use labd::store::RunState;
use std::collections::BTreeSet;
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
    // 1000 µL tips only: the Flex's pipettes.
    sources.push((
        "flex.yaml".into(),
        "labwright: 1\nname: flex\nliquids:\n  water: water\nlabware:\n  res:\n    type: nest_12_reservoir_15ml\n    contents:\n      A1: { water: 10 mL }\n  big: { type: opentrons_96_tiprack_1000ul }\nsteps:\n  - transfer: { from: res/A1, to: res/A2:A3, volume: 500 uL, mix_after: { times: 2, volume: 200 uL } }\n".into(),
    ));
    let mut runs = Vec::new();
    let mut claims: BTreeSet<(String, String)> = BTreeSet::new();
    for (name, text) in &sources {
        let c = protocols::compile(
            &protocols::SourceFile::new(name.clone(), text.clone()),
            protocols::Format::Auto,
            &site,
            &labware::Library::shipped(),
        );
        // This lab has no shaker, sealer or centrifuge: those snippets are refused at compile time.
        let Some(plan) = c.plan else { continue };
        runs.push((format!("{name} as compiled"), plan.clone()));
        for (ti, task) in plan.tasks.iter().enumerate() {
            for id in &task.instruments {
                let inst = site.instruments.iter().find(|i| &i.id == id).unwrap();
                if !task.pipettes.iter().all(|p| inst.pipettes.iter().any(|q| &q.name == p)) {
                    continue;
                }
                for c in &task.commands {
                    let op = serde_json::to_value(&c.op).unwrap()["op"].as_str().unwrap().to_string();
                    claims.insert((op, id.clone()));
                }
                let mut forced = plan.clone();
                forced.tasks[ti].instruments = vec![id.clone()];
                runs.push((format!("{name}: `{}` on {id}", task.label), forced));
            }
        }
    }
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
        let t = store.create_tenant("contract", 1.0).unwrap();
        let mut names = std::collections::BTreeMap::new();
        for (k, (label, plan)) in runs.iter().enumerate() {
            let run = ex.submit(&t.id, &format!("c{k}"), label, "contract", plan).unwrap();
            names.insert(run.id, label.clone());
        }
        let technician = {
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    for i in store.interventions(None, true).unwrap() {
                        store.resolve_intervention(&i.id, "done", "contract-test").unwrap();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
        };
        let report = tokio::time::timeout(std::time::Duration::from_secs(300), ex.run_queued()).await.unwrap().unwrap();
        technician.abort();
        let failed: Vec<String> = report
            .runs
            .iter()
            .filter(|r| r.1 != RunState::Succeeded)
            .map(|r| format!("{}: {:?}", names[&r.0], r.2))
            .collect();
        assert!(failed.is_empty(), "claimed by the compiler, refused or failed on a robot:\n{}", failed.join("\n"));
        assert_eq!(report.runs.len(), runs.len());
        for (id, sim) in &sims.opentrons {
            let s = sim.state.lock().unwrap();
            assert!(s.posted.len() > 20, "{id} was driven over HTTP ({} commands)", s.posted.len());
            assert!(s.mounts.values().all(|c| c.tips.iter().all(Option::is_none)), "{id} ends with no tip on");
        }
        // The dilution was read: the reader saw what the OT-2 pipetted.
        let dilution = report.runs.iter().find(|r| names[&r.0] == "serial-dilution.yaml as compiled").unwrap();
        let results = store.results(None, &dilution.0).unwrap();
        assert!(!results.is_empty(), "the serial dilution has results");
        eprintln!("opentrons contract: {} runs, {} (command, robot) pairs", runs.len(), claims.len());
    });
}
