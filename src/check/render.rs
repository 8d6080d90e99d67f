//! Rendering `check`'s report: text (optionally colored) or JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::eval::Report;

/// The report as one JSON document, with a summary.
pub(super) fn report_json(report: &Report) -> Value {
    json!({
        "objects": report.objects,
        "skipped": report.skipped,
        "errors": report.errors,
        "summary": {
            "checked": report.objects.len(),
            "allowed": report.objects.len() - report.denied(),
            "denied": report.denied(),
            "skipped": report.skipped.len(),
            "errors": report.errors.len(),
        },
    })
}

struct Paint {
    on: bool,
}

impl Paint {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// The report as text: one block per object, then a summary line; ANSI colors when `color`.
pub(super) fn render_text(report: &Report, color: bool) -> String {
    let paint = Paint { on: color };
    let mut out = String::new();
    for object in &report.objects {
        let verdict = if object.allowed {
            paint.paint("32", "allowed")
        } else {
            paint.paint("1;31", "DENIED")
        };
        let _ = writeln!(
            out,
            "{}:{}: {}: {verdict}",
            object.origin.source,
            object.origin.line,
            object.origin.label()
        );
        for denial in &object.denials {
            let _ = writeln!(out, "  {} {denial}", paint.paint("31", "deny:"));
        }
        for warning in &object.warnings {
            let _ = writeln!(out, "  {} {warning}", paint.paint("33", "warn:"));
        }
        for op in object.patch.as_array().into_iter().flatten() {
            let text = |field: &str| op.get(field).and_then(Value::as_str).unwrap_or_default();
            let value = op.get("value").map(Value::to_string).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {} {} {value}",
                paint.paint("36", "patch:"),
                text("op"),
                text("path")
            );
        }
    }
    let denied = report.denied();
    let _ = writeln!(
        out,
        "{} object(s) checked: {} allowed, {denied} denied; {} skipped (not rndc-warden's){}",
        report.objects.len(),
        report.objects.len() - denied,
        report.skipped.len(),
        if report.errors.is_empty() {
            String::new()
        } else {
            format!("; {} input error(s)", report.errors.len())
        }
    );
    out
}
