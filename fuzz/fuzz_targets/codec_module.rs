#![no_main]
//! Opentrons module replies: any bytes, any dialect, never a panic.
use devices::codec::module::{Dialect, ReplyReader, Request};
use libfuzzer_sys::fuzz_target;
#[path = "codecs.rs"]
mod codecs;

fuzz_target!(|data: &[u8]| {
    for d in [Dialect::HeaterShaker, Dialect::ThermocyclerGen2, Dialect::TemperatureModule] {
        let req = Request::new("M105");
        let mut r = ReplyReader::new(d, &req);
        codecs::feed(data, |b| r.poll(b).map(|x| x.map(|rep| rep.number("C").ok())));
    }
});
