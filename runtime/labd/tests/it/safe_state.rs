//! One tenant's failed task must not break the instrument for the next tenant: after a failure
//! in any command kind the instrument is put back in a safe state (or, where it cannot be, taken
//! out of service until a technician has looked), and every other run succeeds.

use super::{contract_sources, heavy, COMPILER_OPS};
use devices::{Execution, Identity, Instrument, InstrumentError, Status};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A real driver whose commands fail as told: the first command of each armed op, on whichever
/// instrument runs it first, reports a device error (after the command ran, or before it for
/// the ops whose skipping leaves the worse state: a tip not dropped, a shaker not stopped).
#[derive(Debug)]
struct Flaky {
    id: String,
    inner: Arc<dyn Instrument>,
    armed: Arc<Mutex<BTreeSet<String>>>,
    fired: Arc<Mutex<Vec<(String, String)>>>,
    /// The first instrument asked to make itself safe says it cannot.
    refuse_safe: Arc<AtomicBool>,
}

fn op_name(op: &protocols::plan::CommandOp) -> String {
    serde_json::to_value(op).unwrap()["op"].as_str().unwrap_or("?").to_string()
}

#[async_trait::async_trait]
impl Instrument for Flaky {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        self.inner.identify().await
    }
    async fn prepare(&self, plan: &protocols::plan::RunPlan) -> Result<(), InstrumentError> {
        self.inner.prepare(plan).await
    }
    async fn start(&self, op: &protocols::plan::CommandOp) -> Result<Execution, InstrumentError> {
        let name = op_name(op);
        if !self.armed.lock().unwrap().remove(&name) {
            return self.inner.start(op).await;
        }
        self.fired.lock().unwrap().push((name.clone(), self.id.clone()));
        if !matches!(name.as_str(), "drop_tip" | "stop_shaking" | "stop_heating") {
            self.inner.start(op).await?.finish().await?;
        }
        Err(InstrumentError::Device { code: "injected".into(), message: format!("injected failure of {name}") })
    }
    async fn status(&self) -> Result<Status, InstrumentError> {
        self.inner.status().await
    }
    async fn abort(&self) -> Result<(), InstrumentError> {
        self.inner.abort().await
    }
    async fn make_safe(&self) -> Result<String, InstrumentError> {
        if self.refuse_safe.swap(false, Ordering::SeqCst) {
            return Err(devices::instrument::unsafe_state("injected: the head does not home"));
        }
        self.inner.make_safe().await
    }
}

#[test]
fn a_failed_task_in_any_command_kind_leaves_the_instrument_safe_for_the_next_tenant() {
    use labd::store::RunState;
    let _machine = heavy();
    let site = labware::Site::sim().unwrap();
    let plans: Vec<(String, protocols::plan::RunPlan)> = contract_sources()
        .into_iter()
        .map(|(name, text)| {
            let c = protocols::compile(
                &protocols::SourceFile::new(name.clone(), text),
                protocols::Format::Auto,
                &site,
                &labware::Library::shipped(),
            );
            (name.clone(), c.plan.unwrap_or_else(|| panic!("{name}: {:#?}", c.diagnostics)))
        })
        .collect();
    let armed_ops = COMPILER_OPS;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use labd::executor::{Executor, ExecutorConfig};
        let scale = devices::TimeScale(0.0001);
        let store: Arc<dyn labd::store::Store> = Arc::new(labd::store::sqlite::SqliteStore::in_memory().unwrap());
        let mut lab = labd::lab::Lab::simulated(site.clone(), scale).await.unwrap();
        let armed = Arc::new(Mutex::new(armed_ops.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()));
        let fired = Arc::new(Mutex::new(Vec::new()));
        let refuse_safe = Arc::new(AtomicBool::new(true));
        for (id, d) in lab.instruments.iter_mut() {
            *d = Arc::new(Flaky {
                id: id.clone(),
                inner: d.clone(),
                armed: armed.clone(),
                fired: fired.clone(),
                refuse_safe: refuse_safe.clone(),
            });
        }
        let lab = Arc::new(lab);
        let config =
            ExecutorConfig { scale, probe_every: std::time::Duration::from_millis(200), ..ExecutorConfig::default() };
        let ex = Arc::new(Executor::new(store.clone(), lab.clone(), config));
        let (a, b) = (store.create_tenant("first", 1.0).unwrap(), store.create_tenant("next", 1.0).unwrap());
        let mut names = std::collections::BTreeMap::new();
        // Each protocol seven times, the two tenants taking turns: enough runs for the
        // heater-shaker's six armed ops to fail one each with a run left to succeed after them.
        const ROUNDS: usize = 7;
        for (k, (name, plan)) in plans.iter().enumerate() {
            for round in 0..ROUNDS {
                let t = if round % 2 == 0 { &a } else { &b };
                let run = ex.submit(&t.id, &format!("s{k}-{round}"), name, name, plan).unwrap();
                names.insert(run.id, format!("{name} #{round} of {}", t.name));
            }
        }
        let worker = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run_queued().await })
        };
        // The technician: additions are done when asked; an instrument that needs attention is
        // looked at a little later, while the lab goes on around it.
        let technician = {
            let (store, ex, lab) = (store.clone(), ex.clone(), lab.clone());
            tokio::spawn(async move {
                let mut attended: Vec<(String, Option<String>)> = Vec::new();
                loop {
                    for i in store.interventions(None, true).unwrap() {
                        if i.what.ends_with("needs attention") {
                            let id = i.instrument.clone().unwrap();
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            let shown = ex.board().unavailable(&id);
                            let flagged = store.maintenance().unwrap().into_iter().any(|m| m.instrument == id);
                            assert!(flagged, "{id} is in maintenance while it needs attention");
                            // The technician's hands: the tip comes off, the head goes home.
                            lab.instruments[&id].make_safe().await.unwrap();
                            attended.push((id, shown));
                        }
                        store.resolve_intervention(&i.id, "done", "safe-state-test").unwrap();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    if store.runs(None, &[RunState::Queued, RunState::Running]).unwrap().is_empty() {
                        return attended;
                    }
                }
            })
        };
        // A technician that stopped (an assertion of theirs failed) fails the test at once, and a
        // lab that has not finished says where it stands rather than only that time ran out.
        let (mut worker, mut technician) = (worker, technician);
        let mut attended = None;
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(400));
        tokio::pin!(deadline);
        let report = loop {
            tokio::select! {
                done = &mut worker => break done.unwrap().unwrap(),
                t = &mut technician, if attended.is_none() => attended = Some(t.expect("the technician")),
                _ = &mut deadline => {
                    let runs: Vec<_> = store.runs(None, &[]).unwrap().into_iter()
                        .filter(|r| !r.state.is_final()).map(|r| (names[&r.id].clone(), r.state)).collect();
                    panic!(
                        "the lab did not finish in 400 s: runs not ended {runs:?}; open interventions {:?}; \
                         maintenance {:?}; technician done: {}; injected {:?}",
                        store.interventions(None, true).unwrap().iter().map(|i| &i.what).collect::<Vec<_>>(),
                        store.maintenance().unwrap(), attended.is_some(), fired.lock().unwrap(),
                    );
                }
            }
        };
        let attended = match attended {
            Some(a) => a,
            None => technician.await.unwrap(),
        };

        let fired = fired.lock().unwrap().clone();
        let fired_ops: BTreeSet<&str> = fired.iter().map(|(op, _)| op.as_str()).collect();
        assert_eq!(
            fired_ops,
            armed_ops.iter().copied().collect::<BTreeSet<_>>(),
            "a failure was injected in every command kind"
        );
        let mut failed = 0;
        for (id, state, reason) in &report.runs {
            let why = reason.clone().unwrap_or_default();
            if *state == RunState::Failed && why.contains("injected failure") {
                failed += 1;
            } else {
                assert_eq!(*state, RunState::Succeeded, "{}: {why}", names[id]);
            }
        }
        assert_eq!(failed, fired.len(), "each injected failure failed its own run and no other");
        assert_eq!(report.runs.len(), plans.len() * ROUNDS);

        // Every failure left a record of what was done to make the instrument safe, except the
        // one that could not be made safe: it needed attention, was out of service meanwhile,
        // and is back once a technician resolved the intervention.
        let mut safe_events = 0;
        for r in store.runs(None, &[]).unwrap() {
            safe_events += store.events(None, &r.id, 0).unwrap().iter().filter(|e| e.kind == "instrument_safe").count();
        }
        assert_eq!(safe_events + 1, failed, "each failed task but one was made safe by its driver");
        assert_eq!(attended.len(), 1, "one instrument needed attention: {attended:?}");
        let (id, shown) = &attended[0];
        assert_eq!(
            shown.as_deref(),
            Some("maintenance: needs attention after a failed task"),
            "the board shows {id} out of service, in words that name no run"
        );
        assert!(store.maintenance().unwrap().is_empty(), "{id} is back in service after the technician's check");
        assert_eq!(ex.board().unavailable(id), None);
        eprintln!("safe state: {} injected failures {fired:?}; {failed} runs failed, the rest succeeded", fired.len());
    });
}
