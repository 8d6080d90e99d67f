//! The command line: one subcommand per front end, every flag with an `RNDC_WARDEN_*` fallback.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::LogArgs;

/// Keeps BIND9 RNDC keys safe on Kubernetes: admission webhook, rotator and offline checks.
#[derive(Debug, Parser)]
#[command(name = "rndc-warden", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS admission webhook, the probe port and (with cluster credentials) the rotator.
    Serve(Box<crate::serve::ServeArgs>),
    /// Check manifests offline and print the decision, warnings and patch for each object.
    Check(crate::check::CheckArgs),
    /// Print the CustomResourceDefinitions rndc-warden understands, as YAML.
    Crdgen,
    /// Compliance report: one row per instance with its key policy, age, next rotation and verdict.
    Audit(crate::audit::AuditArgs),
    /// Request an immediate rotation of an instance's key (rate-limited to one per hour unless --force).
    Rotate(crate::rotate::RotateArgs),
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let Cli { log, command } = cli;
    match command {
        Command::Serve(args) => {
            crate::telemetry::init(&log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::serve::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => crate::check::run(&args),
        Command::Audit(args) => {
            let args = &args;
            with_cluster(&args.policy, |client, policy| async move {
                crate::audit::run(&client, &policy, args).await
            })
        }
        Command::Rotate(args) => {
            let args = &args;
            with_cluster(&args.policy, |client, policy| async move {
                crate::rotate::run(&client, &policy, args).await
            })
        }
        Command::Crdgen => {
            print!("{}", crate::api::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}

/// Runs a command that talks to the cluster like kubectl does: the policy flags are checked, a
/// client is built from the normal kubeconfig (or in-cluster config), and `work` runs on a
/// single-threaded runtime. A problem before `work` starts is exit code 2, with the reason.
fn with_cluster<F, Fut>(policy: &crate::config::PolicyArgs, work: F) -> ExitCode
where
    F: FnOnce(kube::Client, crate::policy::PolicyConfig) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let policy = match policy.to_config() {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        match kube::Client::try_default().await {
            Ok(client) => work(client, policy).await,
            Err(error) => {
                eprintln!("error: no usable kubeconfig: {error}");
                ExitCode::from(2)
            }
        }
    })
}
