//! `labctl results --format parquet`: the result rows ([`crate::results::result_rows`]) as one
//! Arrow record batch in a Parquet file (snappy), for pandas, R, Spark and DuckDB. The schema
//! (docs/python-client.md, "Parquet") is [`schema`]; text columns are UTF-8, the plate map's
//! columns are null where the map says nothing, `read_at` is a UTC timestamp in milliseconds.

use crate::results::ResultRow;
use anyhow::{Context, Result};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use std::sync::Arc;

/// The columns, in the order of the CSV.
pub(crate) fn schema() -> Schema {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Schema::new(vec![
        text("run", false),
        text("protocol", false),
        text("result", false),
        text("labware", false),
        text("kind", false),
        text("well", false),
        text("sample", true),
        text("group", true),
        text("role", true),
        Field::new("replicate", DataType::UInt32, true),
        Field::new("concentration", DataType::Float64, true),
        text("concentration_unit", true),
        Field::new("wavelength_nm", DataType::Float64, true),
        Field::new("value", DataType::Float64, false),
        text("unit", false),
        Field::new("read_at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        text("source_samples", true),
        text("source_wells", true),
    ])
}

/// The rows as Parquet bytes.
pub(crate) fn results_parquet<'a>(rows: &[ResultRow<'a>]) -> Result<Vec<u8>> {
    let text = |f: &dyn Fn(&ResultRow<'a>) -> &'a str| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let mapped = |f: &dyn Fn(&protos::labwright::v1::WellDesign) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(|r| r.design.and_then(f)).collect::<Vec<_>>()))
    };
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let joined = |f: &dyn Fn(&protos::labwright::v1::WellOrigin) -> &Vec<String>| -> ArrayRef {
        let of = |r: &ResultRow<'a>| r.origin.map(f).filter(|v| !v.is_empty()).map(|v| v.join("; "));
        Arc::new(StringArray::from(rows.iter().map(of).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|r| r.run),
        text(&|r| r.protocol),
        text(&|r| r.result),
        text(&|r| r.labware),
        text(&|r| r.kind),
        text(&|r| r.well),
        mapped(&|d| nonempty(&d.sample)),
        mapped(&|d| nonempty(&d.group)),
        mapped(&|d| nonempty(&d.role)),
        Arc::new(UInt32Array::from(rows.iter().map(|r| r.design.map(|d| d.replicate)).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.design.and_then(|d| d.concentration)).collect::<Vec<_>>())),
        mapped(&|d| nonempty(&d.concentration_unit)),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.wavelength_nm).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.value).collect::<Vec<_>>())),
        text(&|r| r.unit),
        Arc::new(
            TimestampMillisecondArray::from(rows.iter().map(|r| r.read_at_ms).collect::<Vec<_>>()).with_timezone("UTC"),
        ),
        joined(&|o| &o.samples),
        joined(&|o| &o.from),
    ];
    let schema = Arc::new(schema());
    let batch = RecordBatch::try_new(schema.clone(), columns).context("assembling the results as Arrow columns")?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props)).context("starting the Parquet file")?;
    writer.write(&batch).context("writing the results as Parquet")?;
    writer.close().context("finishing the Parquet file")?;
    Ok(out)
}
