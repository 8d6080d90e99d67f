//! The committed CRDs (`deploy/crds/crds.yaml`) match what the code generates, and the generated
//! schemas keep the properties the compatibility rules need.

use std::path::PathBuf;

use rndc_warden::api::crd_yaml;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/crds/crds.yaml")
}

#[test]
fn committed_crds_are_up_to_date() {
    let generated = crd_yaml();
    if std::env::var_os("UPDATE_CRDS").is_some() {
        std::fs::write(committed(), &generated).expect("CRD file written");
    }
    let on_disk = std::fs::read_to_string(committed()).unwrap_or_default();
    assert!(
        on_disk == generated,
        "deploy/crds/crds.yaml is stale; regenerate it with \
         `cargo run -- crdgen > deploy/crds/crds.yaml` (or UPDATE_CRDS=1 cargo test --test crd_fresh)"
    );
}

#[test]
fn every_generated_crd_is_structural_and_serves_v1beta1_with_status() {
    let generated = crd_yaml();
    let crds: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&generated)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("each document is YAML"))
        .collect();
    assert_eq!(crds.len(), 3);
    for crd in &crds {
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1beta1");
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        assert!(version["subresources"]["status"].is_object());
        let schema = &version["schema"]["openAPIV3Schema"];
        assert_no_mixed_properties(schema, "openAPIV3Schema");
    }
}

/// A structural schema never has `properties` and `additionalProperties` on one node.
fn assert_no_mixed_properties(node: &serde_json::Value, path: &str) {
    if let Some(object) = node.as_object() {
        assert!(
            !(object.contains_key("properties") && object.contains_key("additionalProperties")),
            "{path} mixes properties and additionalProperties"
        );
        for (key, child) in object {
            assert_no_mixed_properties(child, &format!("{path}.{key}"));
        }
    } else if let Some(items) = node.as_array() {
        for (i, child) in items.iter().enumerate() {
            assert_no_mixed_properties(child, &format!("{path}[{i}]"));
        }
    }
}

/// Every `format` in the generated schemas is one the apiserver knows (an unknown one, such as the
/// `uint32` schemars derives for `u32`, makes every `kubectl apply` print a warning).
#[test]
fn every_generated_format_is_known_to_the_apiserver() {
    let generated = crd_yaml();
    let mut formats = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&generated) {
        let crd: serde_json::Value = serde::Deserialize::deserialize(doc).expect("YAML");
        collect_formats(&crd, &mut formats);
    }
    assert!(
        formats.iter().any(|f| f == "int64"),
        "the status counters carry an integer format: {formats:?}"
    );
    let unknown: Vec<&String> = formats
        .iter()
        .filter(|f| !rndc_warden::api::APISERVER_FORMATS.contains(&f.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "formats the apiserver does not know: {unknown:?}"
    );
}

fn collect_formats(node: &serde_json::Value, out: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(object) => {
            if let Some(serde_json::Value::String(format)) = object.get("format") {
                out.push(format.clone());
            }
            object
                .values()
                .for_each(|child| collect_formats(child, out));
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|child| collect_formats(child, out))
        }
        _ => {}
    }
}
