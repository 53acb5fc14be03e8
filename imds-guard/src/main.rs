//! `imds-guard`: the command line.
//!
//! Exit codes: 0 success; 1 the policy is invalid (nothing was attached);
//! 2 bad command line; 3 the guard could not be set up or run.

use std::process::ExitCode;

use clap::Parser as _;
use imds_guard::{
    cli::{Cli, Command, ValidateArgs},
    logging,
    policy::{PolicyError, PolicySpec, SystemResolver},
    run::{RunError, run},
};

const EXIT_INVALID_POLICY: u8 = 1;
const EXIT_RUNTIME: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            logging::init(args.log_format);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("imds-guard: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            match rt.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(RunError::Policy(e)) => {
                    report_policy_error(&e);
                    tracing::error!("the policy is invalid; nothing was attached");
                    ExitCode::from(EXIT_INVALID_POLICY)
                }
                Err(e) => {
                    tracing::error!("{:#}", anyhow::Error::from(e));
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Validate(args) => validate(&args),
    }
}

fn validate(args: &ValidateArgs) -> ExitCode {
    let result = PolicySpec::load(&args.config).and_then(|spec| {
        if args.offline {
            Ok(spec)
        } else {
            spec.resolve(&SystemResolver).map(|p| p.spec)
        }
    });
    match result {
        Ok(spec) => {
            println!(
                "{}: valid ({} entries, {} endpoints{})",
                args.config.display(),
                spec.entries.len(),
                spec.endpoints.len(),
                if args.offline {
                    ", names not resolved"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            report_policy_error(&e);
            ExitCode::from(EXIT_INVALID_POLICY)
        }
    }
}

/// Prints the policy's diagnostics, one `FILE:LINE:COL: what` per line, on
/// stderr (plain, whatever the log format: this is for the operator).
fn report_policy_error(e: &PolicyError) {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("{message}");
}
