//! Policy settings from flags and `RNDC_WARDEN_*` environment variables, shared by `check` and
//! `serve`.

use std::collections::BTreeSet;

use clap::Args;

use crate::policy::{
    Algorithm, ConfigError, DEFAULT_ROTATOR_USERNAME, DEFAULT_SECRET_NAME_TEMPLATE, PolicyConfig,
    RotateAfter, SecretNameTemplate,
};

/// Policy flags: deny list, defaults, compliance mode, Secret naming and the rotator's identity.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct PolicyArgs {
    /// Algorithms denied wherever they appear (comma-separated).
    #[arg(
        long,
        env = "RNDC_WARDEN_DENY_ALGORITHMS",
        value_delimiter = ',',
        default_value = "hmac-md5,hmac-sha1",
        value_parser = parse_algorithm
    )]
    pub deny_algorithms: Vec<Algorithm>,
    /// Allow every algorithm (empties the deny list).
    #[arg(
        long,
        env = "RNDC_WARDEN_ALLOW_ALL_ALGORITHMS",
        conflicts_with = "deny_algorithms"
    )]
    pub allow_all_algorithms: bool,
    /// `rotateAfter` filled into blocks that omit it.
    #[arg(long, env = "RNDC_WARDEN_DEFAULT_ROTATE_AFTER", default_value = "2160h", value_parser = parse_rotate_after)]
    pub default_rotate_after: RotateAfter,
    /// `algorithm` filled into blocks that omit it.
    #[arg(long, env = "RNDC_WARDEN_DEFAULT_ALGORITHM", default_value = "hmac-sha256", value_parser = parse_algorithm)]
    pub default_algorithm: Algorithm,
    /// `autoRotate` filled into blocks that omit it.
    #[arg(
        long,
        env = "RNDC_WARDEN_DEFAULT_AUTO_ROTATE",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub default_auto_rotate: bool,
    /// Compliance mode: deny managed keys whose effective `autoRotate` is false.
    #[arg(long, env = "RNDC_WARDEN_REQUIRE_AUTO_ROTATE")]
    pub require_auto_rotate: bool,
    /// Name of generated Secrets; `{instance}` is replaced by the instance name
    /// (`{instance}-rndc-key` matches the upstream operator).
    #[arg(long, env = "RNDC_WARDEN_SECRET_NAME_TEMPLATE", default_value = DEFAULT_SECRET_NAME_TEMPLATE)]
    pub secret_name_template: String,
    /// Username the rotator acts as (exempt from the annotation tamper rules).
    #[arg(long, env = "RNDC_WARDEN_ROTATOR_USERNAME", default_value = DEFAULT_ROTATOR_USERNAME)]
    pub rotator_username: String,
}

fn parse_algorithm(value: &str) -> Result<Algorithm, String> {
    value.trim().parse::<Algorithm>().map_err(|e| e.to_string())
}

fn parse_rotate_after(value: &str) -> Result<RotateAfter, String> {
    RotateAfter::parse(value).map_err(|e| e.to_string())
}

impl PolicyArgs {
    /// Builds and checks the policy settings.
    pub fn to_config(&self) -> Result<PolicyConfig, ConfigError> {
        let denied_algorithms: BTreeSet<Algorithm> = if self.allow_all_algorithms {
            BTreeSet::new()
        } else {
            self.deny_algorithms.iter().copied().collect()
        };
        let config = PolicyConfig {
            denied_algorithms,
            default_auto_rotate: self.default_auto_rotate,
            default_rotate_after: self.default_rotate_after,
            default_algorithm: self.default_algorithm,
            require_auto_rotate: self.require_auto_rotate,
            secret_name_template: SecretNameTemplate::parse(&self.secret_name_template)?,
            rotator_username: self.rotator_username.clone(),
        };
        config.validate()?;
        Ok(config)
    }
}

impl TryFrom<&PolicyArgs> for PolicyConfig {
    type Error = ConfigError;

    fn try_from(args: &PolicyArgs) -> Result<Self, Self::Error> {
        args.to_config()
    }
}

/// Parses an operational duration flag: `500ms`, `10s`, `5m`, `1h` or `90d` (not `rotateAfter`,
/// whose grammar is the policy's).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; use e.g. 500ms, 10s, 5m or 1h"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number; use e.g. 10s"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(number)),
        "s" => Ok(std::time::Duration::from_secs(number)),
        "m" => Ok(std::time::Duration::from_secs(number.saturating_mul(60))),
        "h" => Ok(std::time::Duration::from_secs(number.saturating_mul(3600))),
        "d" => Ok(std::time::Duration::from_secs(
            number.saturating_mul(86_400),
        )),
        _ => Err(format!(
            "{text:?} has unknown unit {unit:?}; use ms, s, m, h or d"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_parse_with_units_and_reject_bare_numbers() {
        assert_eq!(
            parse_duration("500ms"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("10s"),
            Ok(std::time::Duration::from_secs(10))
        );
        assert_eq!(
            parse_duration("2m"),
            Ok(std::time::Duration::from_secs(120))
        );
        assert_eq!(
            parse_duration("730d"),
            Ok(std::time::Duration::from_secs(730 * 86_400))
        );
        assert!(
            parse_duration("10")
                .expect_err("no unit")
                .contains("no unit")
        );
        assert!(
            parse_duration("10y")
                .expect_err("bad unit")
                .contains("unknown unit")
        );
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    fn parse(args: &[&str]) -> Result<PolicyConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.policy.to_config().map_err(|e| e.to_string())
    }

    #[test]
    fn no_flags_give_the_default_policy() {
        // The test process does not set RNDC_WARDEN_* variables.
        assert_eq!(parse(&[]), Ok(PolicyConfig::default()));
    }

    #[test]
    fn flags_set_every_field() {
        let cfg = parse(&[
            "--deny-algorithms",
            "hmac-md5,hmac-sha1,hmac-sha224",
            "--default-rotate-after",
            "30d",
            "--default-algorithm",
            "hmac-sha512",
            "--default-auto-rotate",
            "true",
            "--require-auto-rotate",
            "--secret-name-template",
            "{instance}-rndc-key",
            "--rotator-username",
            "system:serviceaccount:dns:warden",
        ])
        .expect("valid flags");
        assert_eq!(cfg.denied_algorithms.len(), 3);
        assert_eq!(cfg.default_rotate_after.to_string(), "30d");
        assert_eq!(cfg.default_algorithm, Algorithm::HmacSha512);
        assert!(cfg.default_auto_rotate && cfg.require_auto_rotate);
        assert_eq!(cfg.secret_name_template.render("a"), "a-rndc-key");
        assert_eq!(cfg.rotator_username, "system:serviceaccount:dns:warden");
    }

    #[test]
    fn bad_values_are_rejected_with_the_policy_messages() {
        let err = parse(&["--default-rotate-after", "30m"]).unwrap_err();
        assert!(err.contains("\"30m\" is not a valid duration"), "{err}");
        let err = parse(&["--default-algorithm", "hmac-sha1"]).unwrap_err();
        assert!(
            err.contains("the default algorithm hmac-sha1 is on the deny list"),
            "{err}"
        );
        let err = parse(&["--secret-name-template", "rndc"]).unwrap_err();
        assert!(err.contains("must contain {instance}"), "{err}");
    }

    #[test]
    fn every_flag_and_environment_variable_is_documented() {
        use clap::CommandFactory;
        let docs = include_str!("../docs/policy.md");
        for arg in Cli::command().get_arguments() {
            let long = format!("--{}", arg.get_long().unwrap_or_default());
            assert!(
                docs.contains(&long),
                "docs/policy.md does not mention {long}"
            );
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert!(docs.contains(env), "docs/policy.md does not mention {env}");
        }
    }

    #[test]
    fn allow_all_algorithms_empties_the_deny_list() {
        let cfg = parse(&["--allow-all-algorithms"]).expect("valid");
        assert!(cfg.denied_algorithms.is_empty());
    }
}
