//! The `labd` command line.

use clap::{Parser, Subcommand, ValueEnum};
use devices::sim::Faults;
use devices::TimeScale;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "labd", version, about = "Labwright runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the lab: store, instruments (simulated unless the site names real endpoints),
    /// executor and the gRPC API. Stops gracefully on Ctrl-C or SIGTERM.
    Serve {
        /// Configuration file (labd.toml); every key has a default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `listen` from the config.
        #[arg(long)]
        listen: Option<String>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides `time_scale`.
        #[arg(long)]
        time_scale: Option<f64>,
        /// Overrides `mqtt_port` (0: any free port, printed at start).
        #[arg(long)]
        mqtt_port: Option<u16>,
        /// Overrides `console_listen` (host:port, or `off`).
        #[arg(long)]
        console: Option<String>,
    },
    /// Show the whole idea in one command: labd on the simulated site in accelerated time,
    /// three tenants submitting the example protocols at once, live progress, the console and
    /// a tenant's MQTT stream, then a summary. Exits 0 when every run succeeded.
    Demo {
        /// Device time per wall time (0.0005: an hour of lab work in 1.8 s).
        #[arg(long, default_value_t = 0.0005)]
        time_scale: f64,
        /// Where the demo keeps its database and results (default: a fresh temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// gRPC API address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Console address (host:port, or `off`).
        #[arg(long, default_value = "127.0.0.1:8650")]
        console: String,
        /// Embedded MQTT broker port (0: any free port).
        #[arg(long, default_value_t = 0)]
        mqtt_port: u16,
        /// Keep labd running after the summary, for exploring the console and API.
        #[arg(long)]
        keep: bool,
    },
    /// Write a password file, an ACL file and a mosquitto.conf for an external Mosquitto from
    /// the tenants' and staff's MQTT credentials: each tenant reads only its own topics, only
    /// the runtime writes. Re-run after adding tenants or tokens, then `kill -HUP` Mosquitto.
    MqttConfig {
        /// Configuration file (labd.toml): data_dir, mqtt_host, mqtt_port.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the simulated instruments of a site as separate endpoints (PTYs, TCP ports, SiLA
    /// servers) and print where each listens; stops on Ctrl-C or SIGTERM.
    Sim {
        /// Site description (lab.toml).
        #[arg(long, default_value = "sites/sim.toml")]
        site: PathBuf,
        /// Device time per wall-clock time: 1.0 real time, 0.01 a hundred times faster.
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Inject faults into one instrument: ID:SPEC, e.g. `hs1:timeout=M104,slow_ms=200`
        /// (see docs/instruments.md). Repeatable.
        #[arg(long = "fault", value_name = "ID:SPEC")]
        faults: Vec<String>,
        /// Address to bind TCP and SiLA simulators to.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        format: Output,
        /// The liquid handlers append every liquid movement to DIR/<id>.liquid.log.
        #[arg(long, value_name = "DIR")]
        log_dir: Option<PathBuf>,
        /// Seed of the simulated readers' noise (the same seed and plates give the same values).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Runs `labd`; returns the process exit code.
pub fn main() -> i32 {
    let cli = match crate::parse_args::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !matches!(cli.command, Command::Serve { .. }) {
        // `serve` chooses its level and format from labd.toml once it has read it.
        match crate::logging::init("info", crate::logging::LogFormat::Text, None) {
            // Without an exporter there is nothing to flush at the end.
            Ok(logging) => logging.shutdown(),
            Err(e) => {
                eprintln!("labd: {e}");
                return 1;
            }
        }
    }
    match cli.command {
        Command::MqttConfig { config, data_dir, out } => {
            let mut c = match config.map(|p| crate::serve::Config::load(&p)).transpose() {
                Ok(c) => c.unwrap_or_default(),
                Err(e) => {
                    eprintln!("labd mqtt-config: {e}");
                    return 1;
                }
            };
            if let Some(d) = data_dir {
                c.data_dir = d;
            }
            match crate::serve::mqtt_config(&c, &out) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    println!(
                        "start Mosquitto with `mosquitto -c {}`; after adding tenants or tokens run this again and `kill -HUP` it",
                        out.join("mosquitto.conf").display()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("labd mqtt-config: {e}");
                    1
                }
            }
        }
        Command::Demo { time_scale, data_dir, listen, console, mqtt_port, keep } => {
            let config = crate::serve::Config {
                data_dir: data_dir.unwrap_or_else(crate::demo::fresh_data_dir),
                listen,
                time_scale,
                mqtt_port,
                console_listen: console,
                ..crate::serve::Config::default()
            };
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("labd demo: {e}");
                    return 1;
                }
            };
            match rt.block_on(crate::demo::demo(crate::demo::DemoOptions { config, keep })) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("labd demo: {e}");
                    1
                }
            }
        }
        Command::Serve { config, listen, data_dir, time_scale, mqtt_port, console } => {
            let mut c = match config {
                Some(p) => match crate::serve::Config::load(&p) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("labd serve: {e}");
                        return 1;
                    }
                },
                None => crate::serve::Config::default(),
            };
            if let Some(l) = listen {
                c.listen = l;
            }
            if let Some(d) = data_dir {
                c.data_dir = d;
            }
            if let Some(t) = time_scale {
                c.time_scale = t;
            }
            if let Some(p) = mqtt_port {
                c.mqtt_port = p;
            }
            if let Some(l) = console {
                c.console_listen = l;
            }
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("labd serve: {e}");
                    return 1;
                }
            };
            // The span exporter's connection lives on the runtime.
            let logging = {
                let _in_runtime = rt.enter();
                crate::logging::init(&c.log_level, c.log_format, c.otlp_endpoint.as_deref())
            };
            let logging = match logging {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("labd serve: {e}");
                    return 1;
                }
            };
            let served = rt.block_on(crate::serve::serve(c));
            logging.shutdown();
            match served {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("labd serve: {e}");
                    1
                }
            }
        }
        Command::Sim { site, time_scale, faults, host, format, log_dir, seed } => {
            match sim(&site, time_scale, &faults, &host, format, log_dir.as_deref(), seed) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("labd sim: {e}");
                    1
                }
            }
        }
    }
}

fn parse_faults(items: &[String]) -> anyhow::Result<BTreeMap<String, Faults>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (id, spec) = item
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--fault `{item}`: write ID:SPEC, e.g. hs1:timeout=M104"))?;
        let f = Faults::parse(spec).map_err(|e| anyhow::anyhow!("--fault `{item}`: {e}"))?;
        out.insert(id.to_string(), f);
    }
    Ok(out)
}

/// The simulators of a site in this process, and the bench they share: the simulated
/// technician of a `labd serve` whose `sim_bench` names the `bench` line loads plates there.
fn sim(
    site_path: &PathBuf,
    scale: f64,
    faults: &[String],
    host: &str,
    format: Output,
    log_dir: Option<&std::path::Path>,
    seed: u64,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if !(scale.is_finite() && scale > 0.0) {
        anyhow::bail!("--time-scale {scale}: give a positive number (1.0 is real time)");
    }
    let text =
        std::fs::read_to_string(site_path).with_context(|| format!("cannot read site {}", site_path.display()))?;
    let site = labware::Site::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", site_path.display()))?;
    let faults = parse_faults(faults)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        if let Some(dir) = log_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create --log-dir {}", dir.display()))?;
        }
        let running = devices::sim::site::start_logged(&site, TimeScale(scale), &faults, host, log_dir)
            .await
            .map_err(anyhow::Error::msg)?;
        crate::lock(&running.bench).set_seed(seed);
        let (bench_at, bench_task) = devices::sim::hands::serve(running.bench.clone(), &format!("{host}:0")).await?;
        let bench = devices::sim::site::Listening {
            id: "bench".into(),
            class: "bench".into(),
            transport: "tcp",
            address: bench_at.to_string(),
        };
        for l in running.listening.iter().chain([&bench]) {
            match format {
                Output::Json => println!("{}", l.to_json()),
                Output::Text => println!("{:<10} {:<15} {:<7} {}", l.id, l.class, l.transport, l.address),
            }
        }
        if let Output::Text = format {
            println!("# {} simulated instruments of site `{}`; in lab.toml use endpoint = \"<transport>:<address>\"; Ctrl-C stops", running.listening.len(), site.site.name);
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        crate::serve::wait_for_stop().await;
        bench_task.abort();
        drop(running);
        Ok(())
    })
}
