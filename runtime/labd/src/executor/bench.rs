//! The simulated technician's hands: in a simulated lab, what a person would put on the bench
//! (a run's plates as its loading list says, reagents poured from the lab's stock) reaches the
//! simulators' bench — in this process, or over the wire to `labd sim`'s bench (`sim_bench`).
//! Nothing in a real lab: a person does it.

use super::failure::JobError;
use super::*;
use devices::sim::hands::Request;

impl Executor {
    /// Puts the run's labware on the simulated bench with the plan's starting contents, once
    /// (a well the bench already knows keeps what it holds), and tells the simulated readers
    /// what each liquid looks like.
    pub(super) async fn put_on_bench(&self, plan: &RunPlan) -> Result<(), JobError> {
        let mut optics: Vec<Request> = plan
            .optics
            .iter()
            .map(|(liquid, o)| Request::Optics { liquid: liquid.clone(), optics: o.clone() })
            .collect();
        // Plans stored before compositions were: the volume, of unknown kind.
        let fills = |lw: &protocols::plan::PlanLabware, well: &str, ul: f64| -> Vec<(String, f64)> {
            match lw.composition.get(well) {
                Some(mix) => mix.iter().map(|(liquid, ul)| (liquid.clone(), *ul)).collect(),
                None => vec![(devices::sim::bench::UNNAMED.to_string(), ul)],
            }
        };
        if let Some(sims) = self.lab.simulated.as_ref() {
            let mut bench = lock(&sims.bench);
            for r in optics {
                if let Request::Optics { liquid, optics } = r {
                    bench.set_optics(&liquid, optics);
                }
            }
            for lw in &plan.labware {
                for (well, ul) in &lw.contents {
                    if !bench.knows(&lw.name, well) {
                        for (liquid, ul) in fills(lw, well, *ul) {
                            bench.fill(&lw.name, well, &liquid, ul);
                        }
                    }
                }
            }
            return Ok(());
        }
        let Some(hands) = self.lab.hands.as_ref() else { return Ok(()) };
        let wells: Vec<(&protocols::plan::PlanLabware, &String, f64)> =
            plan.labware.iter().flat_map(|lw| lw.contents.iter().map(move |(w, ul)| (lw, w, *ul))).collect();
        let asks: Vec<Request> =
            wells.iter().map(|(lw, w, _)| Request::Knows { labware: lw.name.clone(), well: w.to_string() }).collect();
        let known = hands.all(&asks).await.map_err(bench_error)?;
        for ((lw, well, ul), known) in wells.iter().zip(known) {
            if !known {
                for (liquid, ul) in fills(lw, well, *ul) {
                    optics.push(Request::Fill { labware: lw.name.clone(), well: well.to_string(), liquid, ul });
                }
            }
        }
        hands.all(&optics).await.map_err(bench_error)?;
        Ok(())
    }

    /// Reagent a technician added by hand: (labware, well, reagent, µL).
    pub(super) async fn pour(&self, adds: &[(&str, &str, &str, f64)]) -> Result<(), JobError> {
        if let Some(sims) = self.lab.simulated.as_ref() {
            let mut bench = lock(&sims.bench);
            for (labware, well, reagent, ul) in adds {
                bench.fill(labware, well, reagent, *ul);
            }
            return Ok(());
        }
        let Some(hands) = self.lab.hands.as_ref() else { return Ok(()) };
        let fills: Vec<Request> = adds
            .iter()
            .map(|(labware, well, reagent, ul)| Request::Fill {
                labware: labware.to_string(),
                well: well.to_string(),
                liquid: reagent.to_string(),
                ul: *ul,
            })
            .collect();
        hands.all(&fills).await.map_err(bench_error)?;
        Ok(())
    }
}

fn bench_error(e: devices::InstrumentError) -> JobError {
    JobError::Lab(format!("the simulated technician could not reach the simulators' bench: {e}"))
}
