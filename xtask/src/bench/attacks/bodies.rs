//! The attack bodies: AdmissionReviews built around the benchmark fixture (the same uid, kind and
//! metadata as the small reviews), with one huge part spliced in as raw JSON text so that the
//! shape is exactly what is described, whatever `serde_json` would have made of it.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::super::review;

/// The largest body the apiserver's webhook client sends and `serve` accepts (7 MiB).
pub const BODY_LIMIT: usize = 7 * 1024 * 1024;
/// What the "7 MiB" uploads fill up to: the limit, less room for rounding.
const UPLOAD_TARGET: usize = BODY_LIMIT - 1024;
/// Where the huge part goes: a string no fixture contains, replaced after serialisation.
const HOLE: &str = "@@attack@@";

/// The fixture review with `edit` applied to its object, serialised, with the JSON string
/// [`HOLE`] replaced by `fill(room)`, where `room` is what is left of `target` bytes.
fn splice(
    edit: impl FnOnce(&mut Value),
    target: usize,
    fill: impl FnOnce(usize) -> String,
) -> Result<Vec<u8>> {
    let mut review = review::validating_request();
    edit(&mut review["request"]["object"]);
    let text = serde_json::to_string(&review).context("serialising the review")?;
    let quoted = format!("\"{HOLE}\"");
    let (before, after) = text
        .split_once(&quoted)
        .context("the review has no place for the attack")?;
    let room = target.saturating_sub(before.len() + after.len());
    let mut body = String::with_capacity(target);
    body.push_str(before);
    body.push_str(&fill(room));
    body.push_str(after);
    Ok(body.into_bytes())
}

/// A Bind9Instance whose inline `spec.rndcKey.secret` (named `x`) has `entries` data entries
/// `"k<i>": "!"`, none of them base64: one problem each.
pub fn huge_denial(entries: usize) -> Result<Vec<u8>> {
    let body = splice(
        |object| {
            object["spec"]["rndcKey"] = json!({
                "secret": { "metadata": { "name": "x" }, "data": HOLE }
            });
        },
        0,
        |_| {
            let mut data = String::with_capacity(entries * 14 + 2);
            data.push('{');
            for i in 0..entries {
                if i > 0 {
                    data.push(',');
                }
                data.push_str("\"k");
                data.push_str(&i.to_string());
                data.push_str("\":\"!\"");
            }
            data.push('}');
            data
        },
    )?;
    ensure!(
        body.len() <= BODY_LIMIT,
        "{entries} entries make a {}-byte body, over the {BODY_LIMIT}-byte limit",
        body.len()
    );
    Ok(body)
}

/// The fixture's (valid) Bind9Instance with an unmodelled `spec.junk` filled up to 7 MiB by
/// `junk(room)`.
fn with_junk(junk: impl FnOnce(usize) -> String) -> Result<Vec<u8>> {
    splice(
        |object| object["spec"]["junk"] = json!(HOLE),
        UPLOAD_TARGET,
        junk,
    )
}

/// A valid Bind9Instance with `spec.junk: [0,0,0,…]` filling the body to 7 MiB.
pub fn flat_array() -> Result<Vec<u8>> {
    with_junk(|room| {
        let zeros = (room.saturating_sub(1) / 2).max(1);
        let mut junk = String::with_capacity(room);
        junk.push('[');
        for i in 0..zeros {
            junk.push_str(if i == 0 { "0" } else { ",0" });
        }
        junk.push(']');
        junk
    })
}

/// A valid Bind9Instance with `spec.junk: [[[…[0]…]], …]`: as many arrays nested `depth` deep as
/// fill the body to 7 MiB.
pub fn nested_arrays(depth: usize) -> Result<Vec<u8>> {
    ensure!(depth > 0, "the nesting depth must be at least 1");
    with_junk(|room| {
        let unit = format!("{}0{}", "[".repeat(depth), "]".repeat(depth));
        let count = (room.saturating_sub(1) / (unit.len() + 1)).max(1);
        let mut junk = String::with_capacity(room);
        junk.push('[');
        for i in 0..count {
            if i > 0 {
                junk.push(',');
            }
            junk.push_str(&unit);
        }
        junk.push(']');
        junk
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("the body is JSON")
    }

    #[test]
    fn the_huge_denial_has_the_entries_under_the_inline_secret_and_fits_the_limit() {
        let body = huge_denial(520_000).expect("body");
        println!("huge denial: {} bytes", body.len());
        assert!(body.len() <= BODY_LIMIT);
        assert!(body.len() > 7_000_000, "{}", body.len());
        let review = parse(&body);
        assert_eq!(review["request"]["uid"], review::REQUEST_UID);
        let secret = &review["request"]["object"]["spec"]["rndcKey"]["secret"];
        assert_eq!(secret["metadata"]["name"], "x");
        let data = secret["data"].as_object().expect("data is an object");
        assert_eq!(data.len(), 520_000);
        assert_eq!(data["k519999"], "!");
        assert!(huge_denial(600_000).is_err(), "over the limit");
    }

    /// The body with `spec.junk`'s text replaced by `0` (parsed: the rest is the valid fixture
    /// object), and that text.
    fn split_junk(body: &[u8]) -> (Value, String) {
        let text = std::str::from_utf8(body).expect("UTF-8");
        let (before, rest) = text.split_once("\"junk\":").expect("a junk field");
        // The junk array ends where its brackets balance.
        let mut depth = 0usize;
        let end = rest
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i + 1)
            })
            .expect("balanced brackets");
        let rest_of_body = format!("{before}\"junk\":0{}", &rest[end..]);
        (parse(rest_of_body.as_bytes()), rest[..end].to_owned())
    }

    #[test]
    fn the_uploads_are_7_mib_of_unmodelled_spec() {
        for (body, depth) in [
            (flat_array().expect("flat"), 0),
            (nested_arrays(200).expect("nested"), 200),
        ] {
            assert!(
                (UPLOAD_TARGET - 1024..=UPLOAD_TARGET).contains(&body.len()),
                "{} bytes",
                body.len()
            );
            let (review, junk) = split_junk(&body);
            let spec = &review["request"]["object"]["spec"];
            assert_eq!(spec["role"], "primary");
            assert_eq!(spec["rndcKey"]["algorithm"], "hmac-sha256");
            // Inside the outer array: items of `depth` arrays around a 0.
            let unit = format!("{}0{}", "[".repeat(depth), "]".repeat(depth));
            let items = &junk[1..junk.len() - 1];
            assert!(items.split(',').all(|item| item == unit), "depth {depth}");
            assert!(items.split(',').count() > 1000);
        }
    }
}
