#![no_main]
//! The simulators' device side: any request lines, to any simulated device, never a panic.
use devices::codec::module::Dialect;
use devices::driver::station::StationKind;
use devices::sim::{arm::ArmSim, liquid::LiquidSim, module::ModuleSim, station::StationSim, LineDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    static SITE: std::sync::OnceLock<(labware::Site, labware::Library)> = std::sync::OnceLock::new();
    let (site, lib) =
        SITE.get_or_init(|| (labware::Site::sim().expect("the shipped site parses"), labware::Library::shipped()));
    let lh = site.instruments.iter().find(|i| i.id == "lh3").expect("lh3");
    let mut devices: Vec<Box<dyn LineDevice>> = vec![
        Box::new(ModuleSim::new(Dialect::HeaterShaker, "f")),
        Box::new(ModuleSim::new(Dialect::ThermocyclerGen2, "f")),
        Box::new(ModuleSim::new(Dialect::TemperatureModule, "f")),
        Box::new(LiquidSim::new(lh, lib.clone())),
        Box::new(ArmSim::new(&["a".to_string(), "b".to_string()])),
        Box::new(StationSim::new(StationKind::Sealer, "f", 1)),
        Box::new(StationSim::new(StationKind::Incubator, "f", 2)),
    ];
    for (i, line) in text.lines().enumerate() {
        for d in devices.iter_mut() {
            let _ = d.busy_for(line);
            let _ = d.handle(line, i as f64);
        }
    }
});
