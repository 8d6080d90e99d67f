//! Full policy evaluation of a typical instance: mutation, validation and the effective
//! configuration, as the webhook and `check` run them.

use criterion::{Criterion, criterion_group, criterion_main};
use rndc_warden::api::{Bind9Cluster, Bind9Instance};
use rndc_warden::policy::{self, PolicyConfig};

const INSTANCE: &str = r#"
apiVersion: bindy.firestoned.io/v1beta1
kind: Bind9Instance
metadata:
  name: dns-primary
  namespace: dns-system
spec:
  clusterRef: my-cluster
  role: Primary
  replicas: 2
  version: "9.18"
  rndcKey:
    autoRotate: true
    rotateAfter: "2160h"
"#;

const CLUSTER: &str = r#"
apiVersion: bindy.firestoned.io/v1beta1
kind: Bind9Cluster
metadata:
  name: my-cluster
  namespace: dns-system
spec:
  primary:
    replicas: 1
    rndcKey:
      autoRotate: true
      rotateAfter: "720h"
      algorithm: hmac-sha512
"#;

fn bench(c: &mut Criterion) {
    let instance: Bind9Instance =
        serde_yaml_ng::from_str(INSTANCE).expect("benchmark instance parses");
    let cluster: Bind9Cluster = serde_yaml_ng::from_str(CLUSTER).expect("benchmark cluster parses");
    let cfg = PolicyConfig::default();
    c.bench_function("review_instance (mutate + validate)", |b| {
        b.iter(|| policy::review_instance(&instance, Some(&cluster), &cfg))
    });
    c.bench_function("effective_config + plan_rotation", |b| {
        let now = chrono::Utc::now();
        b.iter(|| {
            let effective = policy::effective_config(&instance, Some(&cluster), &cfg)
                .expect("benchmark instance resolves");
            policy::plan_rotation(&effective, None, now, &cfg)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
