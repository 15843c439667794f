//! The lookup table of a binding: a CSV file read the way `pandas.read_csv` reads it, each column
//! converted by its declared dtype.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::value::Py;
use crate::error::{Error, Result};

/// pandas' default NA tokens.
pub(crate) const NA_TOKENS: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];
const TRUE_TOKENS: [&str; 3] = ["True", "TRUE", "true"];
const FALSE_TOKENS: [&str; 3] = ["False", "FALSE", "false"];

/// The dtype of a table column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// Text; NA cells are float NaN.
    Str,
    /// numpy int64 (never NA).
    Int64,
    /// numpy float64; NA cells are NaN.
    Float64,
    /// numpy bool.
    Bool,
    /// Python bools, or float NaN for NA cells.
    BoolOrNan,
}

impl Dtype {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "str" => Dtype::Str,
            "int64" => Dtype::Int64,
            "float64" => Dtype::Float64,
            "bool" => Dtype::Bool,
            "bool_or_nan" => Dtype::BoolOrNan,
            _ => return None,
        })
    }
}

/// A parsed table: its columns with their dtypes, and its rows of typed cells.
#[derive(Debug, Clone)]
pub struct Table {
    pub(crate) columns: Vec<(String, Dtype)>,
    pub(crate) rows: Vec<Vec<Py>>,
    /// Per column, the rows holding each value (NaN cells are in no entry).
    index: Vec<ColumnIndex>,
}

/// The rows of one column by value: text, or a number (ints and bools as their float value,
/// `-0.0` as `0.0`).
#[derive(Debug, Clone, Default)]
struct ColumnIndex {
    text: FxHashMap<Arc<str>, Vec<u32>>,
    num: FxHashMap<u64, Vec<u32>>,
}

fn num_key(v: &Py) -> Option<u64> {
    let f = v.num()?.f();
    (!f.is_nan()).then(|| (f + 0.0).to_bits())
}

impl Table {
    /// Parses CSV text whose header must equal `columns` (names in file order).
    ///
    /// # Errors
    /// [`Error::Binding`] naming `what` for a header that differs, a short row, or a cell its
    /// dtype cannot hold.
    pub fn parse(what: &str, text: &str, columns: &[(String, Dtype)]) -> Result<Self> {
        let bad = |reason: String| Error::Binding {
            what: what.to_string(),
            reason,
        };
        let Records {
            header: names,
            rows: records,
            lines,
        } = read_records(text).map_err(bad)?;
        let expected: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        if names != expected {
            return Err(bad(format!(
                "the header {names:?} differs from the binding's columns {expected:?}"
            )));
        }
        let mut rows = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let mut row = Vec::with_capacity(columns.len());
            for (text, (name, dtype)) in record.iter().zip(columns) {
                let cell = convert(text, *dtype).ok_or_else(|| {
                    bad(format!(
                        "line {}, column `{name}`: {text:?} is not a {dtype:?}",
                        lines[i]
                    ))
                })?;
                row.push(cell);
            }
            rows.push(row);
        }
        let mut index: Vec<ColumnIndex> = vec![ColumnIndex::default(); columns.len()];
        for (r, row) in rows.iter().enumerate() {
            for (c, cell) in row.iter().enumerate() {
                match cell {
                    Py::Str(s) => index[c].text.entry(s.clone()).or_default().push(r as u32),
                    other => {
                        if let Some(k) = num_key(other) {
                            index[c].num.entry(k).or_default().push(r as u32);
                        }
                    }
                }
            }
        }
        Ok(Self {
            columns: columns.to_vec(),
            rows,
            index,
        })
    }

    /// The rows whose cell in `column` may equal `value` under pandas' rules (a superset of
    /// the matches: callers still compare), in file order.
    pub(crate) fn candidates(&self, column: usize, value: &Py) -> &[u32] {
        let index = &self.index[column];
        let hits = match (self.columns[column].1, value) {
            (Dtype::Str, Py::Str(s)) => index.text.get(&**s),
            (Dtype::Str, _) => None,
            (_, v) => num_key(v).and_then(|k| index.num.get(&k)),
        };
        hits.map_or(&[], Vec::as_slice)
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The index of a column.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| n == name)
    }

    /// The column names, in file order.
    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(n, _)| n.as_str())
    }

    /// The cell at `row`, `column`.
    pub fn cell(&self, row: usize, column: usize) -> Option<&Py> {
        self.rows.get(row).and_then(|r| r.get(column))
    }
}

/// Reads CSV text as pandas' `read_csv` sees it: RFC 4180 records, the first one the header,
/// with an empty first header cell named `Unnamed: 0`. Every row must have the header's length,
/// the last one too, with or without a line ending, and a quoted cell must be closed: a file
/// cut short inside a quoted cell is an error, not a shorter last cell.
///
/// # Errors
/// What is wrong, naming the file's line (1-based, the header being line 1).
pub(crate) fn read_records(text: &str) -> std::result::Result<Records, String> {
    if let Some(line) = unclosed_quote(text) {
        return Err(format!(
            "line {line}: a quoted cell opens here and is never closed (is the file cut short?)"
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let located = |e: csv::Error| match e.position() {
        Some(p) => format!("line {}: CSV error: {e}", p.line()),
        None => format!("CSV error: {e}"),
    };
    let mut header: Vec<String> = match records.next() {
        Some(r) => r.map_err(located)?.iter().map(str::to_string).collect(),
        None => return Err("the table is empty".into()),
    };
    if header.first().is_some_and(String::is_empty) {
        header[0] = "Unnamed: 0".into();
    }
    let (mut rows, mut lines) = (Vec::new(), Vec::new());
    for r in records {
        let r = r.map_err(located)?;
        let line = r.position().map_or(0, csv::Position::line);
        if r.len() != header.len() {
            return Err(format!(
                "line {line}: {} cells for {} columns",
                r.len(),
                header.len()
            ));
        }
        rows.push(r.iter().map(str::to_string).collect());
        lines.push(line);
    }
    Ok(Records {
        header,
        rows,
        lines,
    })
}

/// The records of a CSV file.
#[derive(Debug)]
pub(crate) struct Records {
    /// The header's cells.
    pub header: Vec<String>,
    /// The rows after the header, each as long as the header.
    pub rows: Vec<Vec<String>>,
    /// The file line (1-based) where each row starts.
    pub lines: Vec<u64>,
}

/// The line where a quoted cell opens and is never closed, if one does (RFC 4180: a quote
/// opens a cell only at its start, and `""` inside is a literal quote).
fn unclosed_quote(text: &str) -> Option<u64> {
    let (mut line, mut opened_at) = (1u64, 1u64);
    let (mut quoted, mut at_cell_start) = (false, true);
    let mut bytes = text.bytes().peekable();
    while let Some(b) = bytes.next() {
        if quoted {
            match b {
                b'"' if bytes.peek() == Some(&b'"') => {
                    bytes.next();
                }
                b'"' => quoted = false,
                b'\n' => line += 1,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' if at_cell_start => {
                quoted = true;
                opened_at = line;
                at_cell_start = false;
            }
            b',' => at_cell_start = true,
            b'\n' => {
                line += 1;
                at_cell_start = true;
            }
            b'\r' => {}
            _ => at_cell_start = false,
        }
    }
    quoted.then_some(opened_at)
}

fn convert(text: &str, dtype: Dtype) -> Option<Py> {
    let na = NA_TOKENS.contains(&text);
    Some(match dtype {
        Dtype::Str if na => Py::Float(f64::NAN),
        Dtype::Str => Py::Str(Arc::from(text)),
        Dtype::Int64 => Py::NpInt(text.parse().ok()?),
        Dtype::Float64 if na => Py::NpFloat(f64::NAN),
        Dtype::Float64 => Py::NpFloat(text.trim().parse().ok()?),
        Dtype::Bool => Py::NpBool(parse_bool(text)?),
        Dtype::BoolOrNan if na => Py::Float(f64::NAN),
        Dtype::BoolOrNan => Py::Bool(parse_bool(text)?),
    })
}

fn parse_bool(text: &str) -> Option<bool> {
    if TRUE_TOKENS.contains(&text) {
        Some(true)
    } else if FALSE_TOKENS.contains(&text) {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_follow_their_dtypes() {
        let cols = vec![
            (String::from("Unnamed: 0"), Dtype::Int64),
            ("name".into(), Dtype::Str),
            ("score".into(), Dtype::Float64),
            ("ok".into(), Dtype::Bool),
            ("ready".into(), Dtype::BoolOrNan),
        ];
        let csv = ",name,score,ok,ready\n0,\"a, \"\"b\"\"\",0.1,TRUE,\n1,None,,false,True\n";
        let t = Table::parse("test", csv, &cols).unwrap();
        assert_eq!(t.len(), 2);
        assert!(matches!(&t.rows[0][1], Py::Str(s) if &**s == "a, \"b\""));
        assert!(matches!(t.rows[0][2], Py::NpFloat(f) if f == 0.1));
        assert!(matches!(t.rows[0][3], Py::NpBool(true)));
        assert!(t.rows[0][4].is_nan());
        assert!(t.rows[1][1].is_nan(), "the text None is NA");
        assert!(matches!(t.rows[1][2], Py::NpFloat(f) if f.is_nan()));
        assert!(matches!(t.rows[1][4], Py::Bool(true)));
    }

    #[test]
    fn bad_tables_are_typed_errors() {
        let cols = vec![(String::from("n"), Dtype::Int64)];
        assert!(Table::parse("t", "m\n1\n", &cols).is_err());
        let e = Table::parse("t", "n\n1\nx\n", &cols)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3, column `n`"), "{e}");
        assert!(Table::parse("t", "n\n1,2\n", &cols).is_err());
        assert!(Table::parse("t", "", &cols).is_err());
    }

    #[test]
    fn a_file_cut_short_or_ragged_is_refused_with_its_line() {
        let whole = "id,note\n1,\"two\nlines\"\n2,\"said \"\"hi\"\"\"\n3,plain";
        let rows = read_records(whole).unwrap().rows;
        assert_eq!(rows.len(), 3, "a last row without a line ending is a row");
        assert_eq!(rows[1][1], "said \"hi\"");
        // Cut inside the last (quoted) cell: an error naming where the cell opened.
        let cut = "id,note\n1,\"two\nlines\"\n2,\"said \"\"h";
        let e = read_records(cut).unwrap_err();
        assert!(
            e.starts_with("line 4:") && e.contains("never closed"),
            "{e}"
        );
        // A last row without a line ending is checked like every other row.
        let e = read_records("id,note\n1,a\n2").unwrap_err();
        assert_eq!(e, "line 3: 1 cells for 2 columns");
        let e = read_records("id,note\n1,\"a\nb\"\n2,b,c\n").unwrap_err();
        assert_eq!(
            e, "line 4: 3 cells for 2 columns",
            "multi-line cells count as lines"
        );
        // A quote inside an unquoted cell is a character, as pandas reads it.
        let rows = read_records("id,size\n1,5\" pipe\n").unwrap().rows;
        assert_eq!(rows[0][1], "5\" pipe");
    }
}
