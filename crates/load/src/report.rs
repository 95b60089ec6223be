//! Output: one flat JSON object per run (no serde needed) and an aligned text table.

use std::fmt::Write as _;

/// Builds a one-line JSON object with string, number, boolean and null fields.
#[derive(Debug, Default)]
pub struct JsonLine {
    out: String,
}

impl JsonLine {
    /// An empty object.
    pub fn new() -> JsonLine {
        JsonLine::default()
    }

    fn key(&mut self, key: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        push_str(&mut self.out, key);
        self.out.push(':');
    }

    /// A string field.
    pub fn str(mut self, key: &str, value: &str) -> JsonLine {
        self.key(key);
        push_str(&mut self.out, value);
        self
    }

    /// An integer field.
    pub fn int(mut self, key: &str, value: u64) -> JsonLine {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    /// A number field with up to 3 decimals (`null` if not finite).
    pub fn num(mut self, key: &str, value: f64) -> JsonLine {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.out, "{}", (value * 1000.0).round() / 1000.0);
        } else {
            self.out.push_str("null");
        }
        self
    }

    /// A number field, or `null`.
    pub fn opt_num(self, key: &str, value: Option<f64>) -> JsonLine {
        match value {
            Some(v) => self.num(key, v),
            None => self.null(key),
        }
    }

    /// An integer field, or `null`.
    pub fn opt_int(self, key: &str, value: Option<u64>) -> JsonLine {
        match value {
            Some(v) => self.int(key, v),
            None => self.null(key),
        }
    }

    /// A string field, or `null`.
    pub fn opt_str(self, key: &str, value: Option<&str>) -> JsonLine {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    /// A boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> JsonLine {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    fn null(mut self, key: &str) -> JsonLine {
        self.key(key);
        self.out.push_str("null");
        self
    }

    /// The finished object, on one line.
    pub fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Builds a two-column text table.
#[derive(Debug, Default)]
pub struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    /// A table under `title`.
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(mut self, name: &str, value: impl std::fmt::Display) -> Table {
        self.rows.push((name.to_owned(), value.to_string()));
        self
    }

    /// Adds a row when `value` is present.
    pub fn opt_row<T: std::fmt::Display>(self, name: &str, value: Option<T>) -> Table {
        match value {
            Some(v) => self.row(name, v),
            None => self,
        }
    }

    /// The table as text, one row a line.
    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (name, value) in &self.rows {
            let _ = writeln!(out, "  {name:<width$}  {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_valid_and_escaped() {
        let line = JsonLine::new()
            .str("mode", "echo")
            .int("n", 3)
            .num("x", 1.23456)
            .num("bad", f64::NAN)
            .opt_int("none", None)
            .bool("ok", true)
            .str("s", "a\"b\\c\nd\u{1}")
            .finish();
        assert_eq!(
            line,
            r#"{"mode":"echo","n":3,"x":1.235,"bad":null,"none":null,"ok":true,"s":"a\"b\\c\nd\u0001"}"#
        );
        assert_eq!(JsonLine::new().finish(), "{}");
    }

    #[test]
    fn table_aligns() {
        let t = Table::new("t").row("a", 1).row("long name", "x").render();
        assert_eq!(t, "t\n  a          1\n  long name  x\n");
    }
}
