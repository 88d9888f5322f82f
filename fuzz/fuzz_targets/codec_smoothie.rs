#![no_main]
//! OT-2 motion controller replies: any bytes, never a panic.
use devices::codec::smoothie::{axes, ReplyReader};
use libfuzzer_sys::fuzz_target;
#[path = "codecs.rs"]
mod codecs;

fuzz_target!(|data: &[u8]| {
    let mut r = ReplyReader::new();
    codecs::feed(data, |b| {
        r.poll(b).map(|x| {
            if let Ok(lines) = &x {
                for l in lines {
                    let _ = axes(l);
                }
            }
            r = ReplyReader::new();
        })
    });
});
