//! Printing query results: aligned tables for people, CSV and JSON for programs, Markdown for
//! reports and issues. Long values (a logits vector) are shortened in tables only.

use std::fmt;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{Cell, ContentArrangement, Table};

use crate::error::{Error, Result};

/// Output formats of query results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrintFormat {
    /// A boxed, aligned table.
    #[default]
    Table,
    /// Comma-separated values with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
    /// A Markdown (GitHub) table.
    Markdown,
}

impl PrintFormat {
    /// Every format, by name.
    pub const ALL: [(&'static str, PrintFormat); 4] = [
        ("table", PrintFormat::Table),
        ("csv", PrintFormat::Csv),
        ("json", PrintFormat::Json),
        ("markdown", PrintFormat::Markdown),
    ];

    /// Parses a format name.
    pub fn from_name(name: &str) -> Option<PrintFormat> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }
}

impl fmt::Display for PrintFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, p)| p == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// Longest value shown in a table cell.
const CELL_WIDTH: usize = 60;

/// Renders batches; at most `max_rows` rows when given (a note says how many were left out).
///
/// # Errors
/// Fails when a value cannot be formatted.
pub fn render(
    batches: &[RecordBatch],
    format: PrintFormat,
    max_rows: Option<usize>,
) -> Result<String> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let limit = max_rows.unwrap_or(usize::MAX).min(total);
    let batches = take(batches, limit);
    let mut out = match format {
        PrintFormat::Table | PrintFormat::Markdown => table(&batches, format)?,
        PrintFormat::Csv => csv(&batches)?,
        PrintFormat::Json => json(&batches)?,
    };
    if limit < total && format != PrintFormat::Json {
        out.push_str(&format!(
            "\n({limit} of {total} rows shown; raise --maxrows to see more)"
        ));
    }
    Ok(out)
}

/// Column names and the rows as display strings (long values shortened), at most `max_rows`.
///
/// # Errors
/// Fails when a value cannot be formatted.
pub fn table_cells(
    batches: &[RecordBatch],
    max_rows: usize,
) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let batches = take(batches, max_rows);
    Ok((header(&batches), values(&batches, true)?))
}

fn take(batches: &[RecordBatch], mut rows: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for b in batches {
        if rows == 0 {
            break;
        }
        let n = b.num_rows().min(rows);
        out.push(b.slice(0, n));
        rows -= n;
    }
    // No rows still has columns: keep the schema so CSV and tables print their header.
    if out.is_empty()
        && let Some(b) = batches.first()
    {
        out.push(b.slice(0, 0));
    }
    out
}

fn header(batches: &[RecordBatch]) -> Vec<String> {
    batches.first().map_or_else(Vec::new, |b| {
        b.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    })
}

fn values(batches: &[RecordBatch], shorten: bool) -> Result<Vec<Vec<String>>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for r in 0..b.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| {
                        let s = f.value(r).to_string();
                        if shorten && s.chars().count() > CELL_WIDTH {
                            let cut: String = s.chars().take(CELL_WIDTH - 1).collect();
                            format!("{cut}…")
                        } else {
                            s
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

fn table(batches: &[RecordBatch], format: PrintFormat) -> Result<String> {
    let mut t = Table::new();
    t.load_preset(if format == PrintFormat::Markdown {
        ASCII_MARKDOWN
    } else {
        UTF8_FULL_CONDENSED
    });
    t.set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(header(batches));
    for row in values(batches, format == PrintFormat::Table)? {
        t.add_row(row.into_iter().map(Cell::new));
    }
    Ok(t.to_string())
}

fn csv(batches: &[RecordBatch]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| Error::Io(e.to_string());
    w.write_record(header(batches)).map_err(io)?;
    for row in values(batches, false)? {
        w.write_record(row).map_err(io)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Io(e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).trim_end().to_string())
}

fn json(batches: &[RecordBatch]) -> Result<String> {
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    w.write_batches(&refs)?;
    w.finish()?;
    let text = String::from_utf8_lossy(&w.into_inner()).to_string();
    Ok(if text.is_empty() {
        "[]".to_string()
    } else {
        text
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("n", DataType::Int32, true),
                Field::new("s", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("a,b"), Some("x"), None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn every_format() {
        let b = [batch()];
        let csv = render(&b, PrintFormat::Csv, None).unwrap();
        assert_eq!(csv, "n,s\n1,\"a,b\"\nNULL,x\n3,NULL");
        let json = render(&b, PrintFormat::Json, None).unwrap();
        assert_eq!(json, r#"[{"n":1,"s":"a,b"},{"s":"x"},{"n":3}]"#);
        let md = render(&b, PrintFormat::Markdown, Some(2)).unwrap();
        assert!(md.starts_with("| n    | s   |"), "{md}");
        assert!(
            md.ends_with("(2 of 3 rows shown; raise --maxrows to see more)"),
            "{md}"
        );
        let table = render(&b, PrintFormat::Table, None).unwrap();
        assert!(table.contains("NULL"), "{table}");
    }
}
