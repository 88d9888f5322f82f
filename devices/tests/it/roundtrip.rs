//! Property tests: what a driver encodes, the simulator decodes to the same values, and what the
//! simulator answers, the driver decodes to the same values — for every text protocol.

use devices::codec::lines::LineBuffer;
use devices::codec::module::{Dialect, ReplyReader, Request};
use devices::codec::{pf400, station};
use devices::driver::station::StationKind;
use devices::sim::module::ModuleSim;
use devices::sim::station::StationSim;
use devices::sim::{LineDevice, Response};
use proptest::prelude::*;

fn bytes(r: Response) -> Vec<u8> {
    match r {
        Response::Reply(b) => b,
        Response::Silent => Vec::new(),
    }
}

/// The request line as the device sees it (terminators stripped, as the serve loop does).
fn line_of(encoded: &[u8]) -> String {
    String::from_utf8(encoded.to_vec()).unwrap().trim().to_string()
}

proptest! {
    #[test]
    fn module_set_points_round_trip(t in 0.0f64..95.0, dt in 0.0f64..1000.0, hs in any::<bool>()) {
        let d = if hs { Dialect::HeaterShaker } else { Dialect::TemperatureModule };
        let mut sim = ModuleSim::new(d, "p");
        // As the driver sends it: the temperature module takes whole degrees.
        let set = Request::new("M104").real('S', if hs { t } else { t.round() });
        let mut buf = LineBuffer::new();
        buf.push(&bytes(sim.handle(&line_of(&set.encode(d)), 0.0)));
        prop_assert!(ReplyReader::new(d, &set).poll(&mut buf).unwrap().is_ok());
        let get = Request::new("M105");
        buf.push(&bytes(sim.handle(&line_of(&get.encode(d)), dt)));
        let reply = ReplyReader::new(d, &get).poll(&mut buf).unwrap().unwrap();
        let target = reply.number("T").unwrap().unwrap();
        let expected = if hs { (t * 100.0).round() / 100.0 } else { t.round() };
        prop_assert!((target - expected).abs() < 0.051, "target {} for {}", target, t);
        let current = reply.number("C").unwrap().unwrap();
        prop_assert!(current >= 23.0_f64.min(expected) - 0.051 && current <= 23.0_f64.max(expected) + 0.051);
        prop_assert!(buf.pending().is_empty(), "the reply was consumed exactly");
    }

    #[test]
    fn pf400_replies_round_trip(code in prop_oneof![Just(0), Just(1), -4000i32..-1], data in "[a-zA-Z0-9 .:-]{0,40}") {
        let line = if data.trim().is_empty() { format!("{code}") } else { format!("{code} {}", data.trim()) };
        match pf400::decode(&line) {
            Ok(r) => { prop_assert!(code >= 0); prop_assert_eq!(r.data, data.trim()); }
            Err(_) => prop_assert!(code < 0),
        }
    }

    #[test]
    fn station_requests_reach_the_simulator_intact(temp in 4.0f64..50.0, rpm in 0u32..1000, name in "[a-z][a-z0-9_]{0,12}") {
        let mut sim = StationSim::new(StationKind::Incubator, "p", 12);
        let set = station::encode("SET", &[("temp", format!("{temp}")), ("rpm", format!("{rpm}"))]);
        prop_assert!(station::decode(line_of(&set).as_str()).is_err(), "a request is not a reply");
        prop_assert!(station::decode(String::from_utf8(bytes(sim.handle(&line_of(&set), 0.0))).unwrap().trim()).is_ok());
        let status = station::decode(String::from_utf8(bytes(sim.handle("STATUS", 0.0))).unwrap().trim()).unwrap();
        prop_assert_eq!(status["temp"].parse::<f64>().unwrap(), (temp * 10.0).round() / 10.0);
        let store = station::encode("STORE", &[("plate", name.clone())]);
        prop_assert!(station::decode(String::from_utf8(bytes(sim.handle(&line_of(&store), 0.0))).unwrap().trim()).is_ok());
        let back = station::encode("RETRIEVE", &[("plate", name)]);
        prop_assert!(station::decode(String::from_utf8(bytes(sim.handle(&line_of(&back), 0.0))).unwrap().trim()).is_ok());
    }

    #[test]
    fn line_buffers_never_lose_or_invent_lines(lines in proptest::collection::vec("[ -~]{0,30}", 0..20), split in 1usize..17) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut b = LineBuffer::new();
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(split) {
            b.push(chunk);
            while let Some(l) = b.next_line() {
                out.push(l.unwrap());
            }
        }
        let expected: Vec<String> = lines.iter().map(|l| l.trim_matches(['\r', ' ', '\t']).to_string()).collect();
        prop_assert_eq!(out, expected);
    }
}
