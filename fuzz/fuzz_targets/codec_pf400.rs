#![no_main]
//! PF400 replies: any bytes, never a panic.
use devices::codec::pf400;
use libfuzzer_sys::fuzz_target;
#[path = "codecs.rs"]
mod codecs;

fuzz_target!(|data: &[u8]| {
    codecs::feed(data, |b| pf400::poll(b).map(|r| r.map(|rep| rep.numbers().ok())));
});
