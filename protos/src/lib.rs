//! Labwright's protobuf contracts and the Rust code generated from them.
//!
//! The `.proto` files under `proto/` are the source of truth for the public API. They are
//! compiled with `protox` at build time, so building needs no system `protoc`. Only this crate,
//! `devices` (SiLA 2) and `labd` see prost types; domain types are converted by hand at the edge.
#![allow(missing_debug_implementations)]

/// `labwright.v1`: the public API.
pub mod labwright {
    /// Version 1 of the API.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/labwright.v1.rs"));
    }
}

#[cfg(test)]
mod tests {
    use super::labwright::v1::*;
    use prost::Message;

    #[test]
    fn messages_round_trip_on_the_wire() {
        let d = Diagnostic {
            code: "P0203".into(),
            severity: Severity::Error as i32,
            message: "well H13 does not exist".into(),
            line: 14,
            column: 9,
            end_line: 14,
            end_column: 18,
            hint: String::new(),
        };
        let resp = ValidateResponse { ok: false, diagnostics: vec![d], tasks: 0, commands: 0 };
        let bytes = resp.encode_to_vec();
        assert_eq!(ValidateResponse::decode(bytes.as_slice()).unwrap(), resp);
        // Field numbers are part of the contract: `ok` is field 1, varint.
        assert_eq!(ValidateResponse { ok: true, ..Default::default() }.encode_to_vec(), vec![0x08, 0x01]);
    }
}
