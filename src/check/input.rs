//! Reading `check`'s input: files, directories (recursively) and stdin, split into YAML or JSON
//! documents with the line each starts at; `kind: List` is expanded.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// Input that could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", self.describe())]
pub struct InputError {
    /// File path, or `-` for stdin.
    pub file: String,
    /// 1-based line (0 when not known).
    pub line: usize,
    /// 1-based column (0 when not known).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl InputError {
    fn describe(&self) -> String {
        match (self.line, self.column) {
            (0, _) => format!("{}: {}", self.file, self.message),
            (line, 0) => format!("{}:{line}: {}", self.file, self.message),
            (line, column) => format!("{}:{line}:{column}: {}", self.file, self.message),
        }
    }
}

/// One document of the input.
#[derive(Debug, Clone)]
pub(super) struct Document {
    /// File path, or `-` for stdin.
    pub(super) source: String,
    /// 1-based line of the document's first content.
    pub(super) line: usize,
    /// The document as JSON.
    pub(super) value: Value,
}

/// Reads `path` (a file, a directory recursively, or `-` for stdin) into `documents`, recording
/// what cannot be read in `errors`.
pub(super) fn read_path(path: &Path, documents: &mut Vec<Document>, errors: &mut Vec<InputError>) {
    let error = |source: String, message: String| InputError {
        file: source,
        line: 0,
        column: 0,
        message,
    };
    if path == Path::new("-") {
        let mut text = String::new();
        match std::io::stdin().read_to_string(&mut text) {
            Ok(_) => split_documents("-", &text, documents, errors),
            Err(e) => errors.push(error("-".into(), format!("cannot read stdin: {e}"))),
        }
        return;
    }
    let shown = path.display().to_string();
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) => return errors.push(error(shown, format!("cannot read: {e}"))),
    };
    if metadata.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return errors.push(error(shown, format!("cannot list directory: {e}"))),
        };
        entries.sort();
        for entry in entries {
            let hidden = entry
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            let manifest = entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if !hidden && (entry.is_dir() || manifest) {
                read_path(&entry, documents, errors);
            }
        }
        return;
    }
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => split_documents(&shown, &text, documents, errors),
            Err(e) => {
                let offset = e.utf8_error().valid_up_to();
                let (line, column) = position(&String::from_utf8_lossy(e.as_bytes()), offset);
                errors.push(InputError {
                    file: shown,
                    line,
                    column,
                    message: "not UTF-8 text".into(),
                });
            }
        },
        Err(e) => errors.push(error(shown, format!("cannot read: {e}"))),
    }
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, column)
}

/// Splits a stream into documents: JSON values, or YAML documents separated by `---` lines.
fn split_documents(
    source: &str,
    text: &str,
    documents: &mut Vec<Document>,
    errors: &mut Vec<InputError>,
) {
    let trimmed = text.trim_start_matches('\u{feff}');
    if trimmed.trim_start().starts_with(['{', '[']) {
        let mut stream = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
        loop {
            let start = stream.byte_offset();
            match stream.next() {
                None => break,
                Some(Ok(value)) => {
                    let skipped = trimmed[start..].len() - trimmed[start..].trim_start().len();
                    let (line, _) = position(trimmed, start + skipped);
                    push_document(source, line, value, documents);
                }
                Some(Err(e)) => {
                    errors.push(InputError {
                        file: source.into(),
                        line: e.line(),
                        column: e.column(),
                        message: strip_position(&e.to_string()),
                    });
                    break;
                }
            }
        }
        return;
    }
    let mut chunks: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in trimmed.lines().enumerate() {
        let separator =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if separator && i > 0 {
            chunks.push((i + 1, String::new()));
        }
        if let Some((_, chunk)) = chunks.last_mut() {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    for (start, chunk) in chunks {
        // Objects are reported at their first line of content, past comments and markers.
        let content = chunk
            .lines()
            .position(|l| {
                let l = l.trim();
                !(l.is_empty() || l.starts_with('#') || l.starts_with("---"))
            })
            .map_or(start, |offset| start + offset);
        match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&chunk) {
            Ok(serde_yaml_ng::Value::Null) => {}
            Ok(yaml) => match serde_json::to_value(&yaml) {
                Ok(value) => push_document(source, content, value, documents),
                Err(e) => errors.push(InputError {
                    file: source.into(),
                    line: start,
                    column: 0,
                    message: format!("cannot convert the document to JSON: {e}"),
                }),
            },
            Err(e) => {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                errors.push(InputError {
                    file: source.into(),
                    line: start + line.saturating_sub(1),
                    column,
                    message: strip_position(&e.to_string()),
                });
            }
        }
    }
}

/// Removes parser positions (`at line 3 column 7`), which refer to the split document.
fn strip_position(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + " at line ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        let tail = &tail[digits..];
        rest = match tail.strip_prefix(" column ") {
            Some(t) => &t[t.bytes().take_while(u8::is_ascii_digit).count()..],
            None => tail,
        };
    }
    out.push_str(rest);
    out
}

/// Adds a document, expanding `kind: List`.
fn push_document(source: &str, line: usize, value: Value, documents: &mut Vec<Document>) {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_array);
    if is_list {
        if let Some(Value::Array(items)) = value.get("items") {
            for item in items {
                push_document(source, line, item.clone(), documents);
            }
        }
    } else {
        documents.push(Document {
            source: source.into(),
            line,
            value,
        });
    }
}

/// The documents and errors of one stream (tests).
#[cfg(test)]
pub(super) fn documents(source: &str, text: &str) -> (Vec<Document>, Vec<InputError>) {
    let (mut documents, mut errors) = (Vec::new(), Vec::new());
    split_documents(source, text, &mut documents, &mut errors);
    (documents, errors)
}

#[cfg(test)]
mod tests {
    use super::documents as docs;
    use super::*;

    #[test]
    fn yaml_streams_split_on_document_markers_and_keep_start_lines() {
        let (documents, errors) = docs(
            "a.yaml",
            "# comment\nkind: A\n---\n---\nkind: B\n--- # c\nkind: C\n...\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let lines: Vec<usize> = documents.iter().map(|d| d.line).collect();
        assert_eq!(lines, [2, 5, 7]);
    }

    #[test]
    fn broken_yaml_reports_file_line_and_column_and_later_documents_still_count() {
        let (documents, errors) = docs("b.yaml", "kind: A\n---\nkind: B\n  bad: [\n---\nkind: C\n");
        assert_eq!(documents.len(), 2);
        assert_eq!(errors.len(), 1);
        let error = &errors[0];
        assert_eq!((error.file.as_str(), error.line), ("b.yaml", 4));
        assert!(!error.message.contains("at line"), "{}", error.message);
    }

    #[test]
    fn json_streams_and_lists_are_read() {
        let (documents, errors) = docs(
            "c.json",
            "{\"kind\":\"List\",\"items\":[{\"kind\":\"A\"},{\"kind\":\"B\"}]}\n\n{\"kind\":\"C\"}",
        );
        assert!(errors.is_empty());
        let lines: Vec<(usize, &str)> = documents
            .iter()
            .map(|d| (d.line, d.value["kind"].as_str().unwrap_or_default()))
            .collect();
        assert_eq!(lines, [(1, "A"), (1, "B"), (3, "C")]);
        let (_, errors) = docs("d.json", "{\"kind\": }");
        assert_eq!((errors[0].line, errors[0].column), (1, 10));
    }

    #[test]
    fn positions_are_stripped_from_parser_messages() {
        assert_eq!(
            strip_position(
                "did not find expected key at line 3 column 7, while parsing a block mapping at line 1 column 1"
            ),
            "did not find expected key, while parsing a block mapping"
        );
    }
}
