//! Config errors: where each one is (file, line, column, field) and what is wrong.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A config that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a valid config; every problem found is listed, in source order.
    #[error("{}", DiagnosticLines(diagnostics))]
    Invalid {
        /// One entry per problem, never empty.
        diagnostics: Vec<Diagnostic>,
    },
}

impl ConfigError {
    /// The problems found, or nothing for an I/O error.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid { diagnostics } => diagnostics,
        }
    }
}

/// Displays diagnostics one per line.
struct DiagnosticLines<'a>(&'a [Diagnostic]);

impl fmt::Display for DiagnosticLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// One problem in a config, located in its source text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// The file name (or other origin) of the text.
    pub origin: String,
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Path of the offending field, like `vip[1].backend[0].address`.
    pub field: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at the byte offset `span.start` of `text` (line 1, column 1 without a span).
    pub(super) fn at(
        text: &str,
        origin: &str,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = span.map_or((1, 1), |span| line_column(text, span.start));
        Diagnostic {
            origin: origin.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The diagnostic for an error from the TOML parser or from serde: syntax, type, unknown key.
    pub(super) fn from_toml(text: &str, origin: &str, error: &toml::de::Error) -> Self {
        let span = error.span();
        let field = match DeTable::parse(text) {
            Err(_) => SYNTAX.to_owned(),
            Ok(document) => span
                .as_ref()
                .and_then(|span| field_at(document.get_ref(), span.start))
                .unwrap_or_else(|| TOP_LEVEL.to_owned()),
        };
        Diagnostic::at(text, origin, span, field, error.message().trim_end())
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.origin, self.line, self.column, self.field, self.message
        )
    }
}

/// The field name of a diagnostic about TOML syntax.
const SYNTAX: &str = "(syntax)";
/// The field name of a diagnostic about the document as a whole.
const TOP_LEVEL: &str = "(top level)";

/// 1-based line and character column of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The path (`vip[0].backend[1].mac`) of the innermost key or value that covers `offset`.
fn field_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut path = String::new();
    field_in_table(table, offset, &mut path).then_some(path)
}

fn field_in_table(table: &DeTable<'_>, offset: usize, path: &mut String) -> bool {
    for (key, value) in table {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        // Tables opened by a header span only the header, so look inside before trusting spans.
        if field_in_value(value, offset, path) || covers(key, offset) || covers(value, offset) {
            return true;
        }
        path.truncate(len);
    }
    false
}

fn field_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => field_in_table(table, offset, path),
        DeValue::Array(array) => {
            for (i, item) in array.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if field_in_value(item, offset, path) || covers(item, offset) {
                    return true;
                }
                path.truncate(len);
            }
            false
        }
        _ => false,
    }
}

fn covers<T>(spanned: &Spanned<T>, offset: usize) -> bool {
    spanned.span().contains(&offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one_in_characters() {
        let text = "a = 1\nbé = \"x\"\n\nc";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(line_column(text, 12), (2, 6));
        assert_eq!(line_column(text, text.len()), (4, 2));
        assert_eq!(line_column(text, 1000), (4, 2));
    }

    #[test]
    fn display_is_origin_line_column_field_message() {
        let diagnostic = Diagnostic {
            origin: "xlb.toml".to_owned(),
            line: 12,
            column: 11,
            field: "vip[0].port".to_owned(),
            message: "70000 is out of range 0..=65535".to_owned(),
        };
        assert_eq!(
            diagnostic.to_string(),
            "xlb.toml:12:11: vip[0].port: 70000 is out of range 0..=65535"
        );
    }

    #[test]
    fn invalid_error_prints_one_line_per_diagnostic() {
        let make = |line, field: &str| Diagnostic {
            origin: "f.toml".to_owned(),
            line,
            column: 1,
            field: field.to_owned(),
            message: "bad".to_owned(),
        };
        let error = ConfigError::Invalid {
            diagnostics: vec![make(1, "a"), make(2, "b")],
        };
        assert_eq!(error.to_string(), "f.toml:1:1: a: bad\nf.toml:2:1: b: bad");
        assert_eq!(error.diagnostics().len(), 2);
    }

    #[test]
    fn io_error_names_the_file() {
        let error = ConfigError::Io {
            path: PathBuf::from("/etc/xlb/xlb.toml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(error.to_string().starts_with("/etc/xlb/xlb.toml: "));
        assert!(error.diagnostics().is_empty());
    }

    #[test]
    fn field_at_finds_keys_in_headers_and_inline_tables() {
        let text = "[a]\nx = 1\n[[b]]\ny = 2\n[[b]]\nz = { w = [1, 2] }\n";
        let document = DeTable::parse(text).unwrap();
        let find = |needle: &str| field_at(document.get_ref(), text.find(needle).unwrap());
        assert_eq!(find("x").as_deref(), Some("a.x"));
        assert_eq!(find("1\n").as_deref(), Some("a.x"));
        assert_eq!(find("y").as_deref(), Some("b[0].y"));
        assert_eq!(find("z").as_deref(), Some("b[1].z"));
        assert_eq!(find("w").as_deref(), Some("b[1].z.w"));
        assert_eq!(find("2]").as_deref(), Some("b[1].z.w[1]"));
    }
}
