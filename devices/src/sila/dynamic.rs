//! Messages of features Labwright has no generated code for. In SiLA 2's protobuf mapping every
//! parameter and response of a command is a message field numbered in FDL order (1, 2, …) whose
//! value is itself a message (`sila2.org.silastandard.Real { double value = 1; }` and so on), so
//! a command's parameters are a list of (field number, encoded value) and its responses can be
//! read field by field without knowing the feature at compile time.

use super::fdl::Basic;
use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use protos::sila2::framework as fw;

/// A value of a SiLA basic type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Real(f64),
    Boolean(bool),
}

impl Value {
    /// The value as its SiLA framework message.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Value::String(v) => fw::String { value: v.clone() }.encode_to_vec(),
            Value::Integer(v) => fw::Integer { value: *v }.encode_to_vec(),
            Value::Real(v) => fw::Real { value: *v }.encode_to_vec(),
            Value::Boolean(v) => fw::Boolean { value: *v }.encode_to_vec(),
        }
    }

    /// Reads a framework message of a known basic type.
    pub fn decode(basic: Basic, bytes: &[u8]) -> Result<Value, DecodeError> {
        Ok(match basic {
            Basic::String => Value::String(fw::String::decode(bytes)?.value),
            Basic::Integer => Value::Integer(fw::Integer::decode(bytes)?.value),
            Basic::Real => Value::Real(fw::Real::decode(bytes)?.value),
            Basic::Boolean => Value::Boolean(fw::Boolean::decode(bytes)?.value),
        })
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::String(v) => write!(f, "{v:?}"),
            Value::Integer(v) => write!(f, "{v}"),
            Value::Real(v) => write!(f, "{v}"),
            Value::Boolean(v) => write!(f, "{v}"),
        }
    }
}

/// A command's parameters or responses: length-delimited fields by number, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(pub Vec<(u32, Vec<u8>)>);

impl Fields {
    /// Every occurrence of field `tag`, in order (a list's elements).
    pub fn all(&self, tag: u32) -> impl Iterator<Item = &[u8]> {
        self.0.iter().filter(move |(t, _)| *t == tag).map(|(_, b)| b.as_slice())
    }

    /// The raw bytes of field `tag` (the last one wins, as protobuf merges).
    pub fn get(&self, tag: u32) -> Option<&[u8]> {
        self.0.iter().rev().find(|(t, _)| *t == tag).map(|(_, b)| b.as_slice())
    }
}

impl Message for Fields {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for (tag, bytes) in &self.0 {
            encoding::bytes::encode(*tag, bytes, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if wire_type == WireType::LengthDelimited {
            let mut bytes = Vec::new();
            encoding::bytes::merge(wire_type, &mut bytes, buf, ctx)?;
            self.0.push((tag, bytes));
            Ok(())
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.0.iter().map(|(tag, bytes)| encoding::bytes::encoded_len(*tag, bytes)).sum()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_read_as_the_generated_messages_do() {
        let params = Fields(vec![(1, Value::String("plate-7".into()).encode()), (2, Value::Real(170.5).encode())]);
        let bytes = params.encode_to_vec();
        // The generated PlateReader LoadPlate parameters read field 1 the same way.
        let load = protos::sila2::platereader::LoadPlateParameters::decode(bytes.as_slice()).unwrap();
        assert_eq!(load.labware.unwrap().value, "plate-7");
        let back = Fields::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, params);
        assert_eq!(Value::decode(Basic::Real, back.get(2).unwrap()).unwrap(), Value::Real(170.5));
        assert_eq!(Value::decode(Basic::Integer, &Value::Integer(-3).encode()).unwrap(), Value::Integer(-3));
        assert_eq!(Value::decode(Basic::Boolean, &Value::Boolean(true).encode()).unwrap(), Value::Boolean(true));
    }
}
