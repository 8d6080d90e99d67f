//! Names shared with the Bindy operator: API group, annotation and label keys, Secret data keys.

/// API group of the Bindy custom resources.
pub const GROUP: &str = "bindy.firestoned.io";
/// API version of the Bindy custom resources.
pub const VERSION: &str = "v1beta1";
/// `apiVersion` value of the Bindy custom resources.
pub const API_VERSION: &str = "bindy.firestoned.io/v1beta1";

/// Secret annotation: when the current key was created (RFC 3339, UTC).
pub const ANNOTATION_CREATED_AT: &str = "bindy.firestoned.io/rndc-created-at";
/// Secret annotation: when the current key is due for rotation (RFC 3339, UTC).
pub const ANNOTATION_ROTATE_AT: &str = "bindy.firestoned.io/rndc-rotate-at";
/// Secret annotation: how many times the key was rotated (decimal).
pub const ANNOTATION_ROTATION_COUNT: &str = "bindy.firestoned.io/rndc-rotation-count";
/// Deployment pod-template annotation that rolls the pods onto a new key revision.
pub const ANNOTATION_ROTATED_AT: &str = "bindy.firestoned.io/rndc-rotated-at";

/// Label that marks a Secret as an RNDC key Secret (managed Secrets carry it; users may add it to
/// their own key Secrets to bring them under the Secret webhook).
pub const LABEL_RNDC_KEY: &str = "bindy.firestoned.io/rndc-key";
/// Value of [`LABEL_RNDC_KEY`] that selects a Secret.
pub const LABEL_RNDC_KEY_VALUE: &str = "true";

/// Secret data key: the TSIG key name.
pub const DATA_KEY_NAME: &str = "key-name";
/// Secret data key: the HMAC algorithm name.
pub const DATA_ALGORITHM: &str = "algorithm";
/// Secret data key: the base64 key material.
pub const DATA_SECRET: &str = "secret";
/// Secret data key: the BIND `key` statement that `named.conf` includes.
pub const DATA_RNDC_KEY: &str = "rndc.key";

/// Key name written into generated Secrets; Bindy's `named.conf` hard-codes it in `controls`.
pub const DEFAULT_KEY_NAME: &str = "bindy-operator";

/// Status condition set after the pods were reloaded onto the current Secret.
pub const CONDITION_RNDC_SECRET_RELOADED: &str = "RndcSecretReloaded";
/// Event reason: a key was rotated.
pub const EVENT_RNDC_KEY_ROTATED: &str = "RndcKeyRotated";
/// Event reason: a rotation failed.
pub const EVENT_RNDC_KEY_ROTATION_FAILED: &str = "RndcKeyRotationFailed";
/// Event reason: the pods were reloaded onto a changed Secret.
pub const EVENT_RNDC_SECRET_RELOADED: &str = "RndcSecretReloaded";
/// Event reason: reloading the pods onto a changed Secret failed.
pub const EVENT_RNDC_SECRET_RELOAD_FAILED: &str = "RndcSecretReloadFailed";
