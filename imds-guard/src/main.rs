//! `imds-guard`: the command line.
//!
//! Exit codes: 0 success; 1 the policy is invalid (nothing was attached or
//! changed); 2 bad command line; 3 the guard could not be set up or run;
//! 4 `render --strict` found something the rules cannot express, or
//! `check` found the process denied; 5 `status`: the guard is not enforcing.

use std::process::ExitCode;

use clap::Parser as _;
use imds_guard::{
    check::check,
    cli::{CheckArgs, Cli, Command, DetachArgs, RenderArgs, StatusArgs, ValidateArgs},
    logging,
    pins::Pins,
    policy::{PolicyError, PolicySpec, SystemResolver},
    render::render,
    run::{RunError, run},
    status::{Status, is_agent},
};

const EXIT_INVALID_POLICY: u8 = 1;
const EXIT_RUNTIME: u8 = 3;
const EXIT_STRICT: u8 = 4;
const EXIT_DENIED: u8 = 4;
const EXIT_NOT_ENFORCING: u8 = 5;

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
        Command::Render(args) => render_rules(&args),
        Command::Detach(args) => detach(&args),
        Command::Status(args) => status(&args),
        Command::Check(args) => check_one(&args),
        Command::Generate(args) => {
            match imds_guard::generate::run_generate(
                &args,
                <Cli as clap::CommandFactory>::command(),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => runtime_error(e),
            }
        }
    }
}

fn runtime_error(e: impl Into<anyhow::Error>) -> ExitCode {
    eprintln!("imds-guard: {:#}", e.into());
    ExitCode::from(EXIT_RUNTIME)
}

fn detach(args: &DetachArgs) -> ExitCode {
    let pins = Pins::new(&args.pin_dir);
    if !pins.dir().exists() {
        println!(
            "nothing is pinned at {}: no guard to detach",
            pins.dir().display()
        );
        return ExitCode::SUCCESS;
    }
    // Read who runs it before its pins go: the pid the live agent wrote,
    // if an agent holds the lock and that pid is an imds-guard process.
    let agent = pins
        .locked()
        .then(|| Status::read(&pins).ok().and_then(|s| s.config))
        .flatten()
        .map(|(_, c)| c.agent_pid)
        .filter(|&pid| is_agent(pid));
    match pins.detach_all() {
        Ok(n) => println!(
            "detached {n} link(s) and removed {}: connections to the metadata service are no longer decided",
            pins.dir().display()
        ),
        Err(e) => return runtime_error(e),
    }
    if let Some(pid) = agent {
        // It would otherwise keep running with nothing to guard.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        println!("stopped the agent (pid {pid})");
    }
    ExitCode::SUCCESS
}

fn status(args: &StatusArgs) -> ExitCode {
    let status = match Status::read(&Pins::new(&args.pin_dir)) {
        Ok(s) => s,
        Err(e) => return runtime_error(e),
    };
    if args.json {
        println!("{}", status.to_json());
    } else {
        print!("{}", status.to_text());
    }
    if status.enforcing() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_ENFORCING)
    }
}

fn check_one(args: &CheckArgs) -> ExitCode {
    let policy = match PolicySpec::load(&args.config).and_then(|s| s.resolve(&SystemResolver)) {
        Ok(p) => p,
        Err(e) => {
            report_policy_error(&e);
            return ExitCode::from(EXIT_INVALID_POLICY);
        }
    };
    let user = match (&args.user, args.uid) {
        (Some(name), _) => match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Some(u),
            Ok(None) => {
                eprintln!("imds-guard: user {name:?} does not exist on this host");
                return ExitCode::from(EXIT_RUNTIME);
            }
            Err(e) => return runtime_error(anyhow::anyhow!("cannot look up user {name:?}: {e}")),
        },
        (None, Some(uid)) => nix::unistd::User::from_uid(uid.into()).ok().flatten(),
        (None, None) => None,
    };
    let Some(uid) = args.uid.or(user.as_ref().map(|u| u.uid.as_raw())) else {
        return runtime_error(anyhow::anyhow!("give --user or --uid"));
    };
    let Some(gid) = args.gid.or(user.as_ref().map(|u| u.gid.as_raw())) else {
        eprintln!(
            "imds-guard: uid {uid} has no entry on this host: give its primary group with --gid"
        );
        return ExitCode::from(EXIT_RUNTIME);
    };
    let v = check(&policy, uid, gid, args.dst);
    if args.json {
        println!("{}", v.to_json(uid, gid, args.dst));
    } else {
        println!("{}", v.to_text(args, uid, gid));
    }
    if v.verdict == "allow" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENIED)
    }
}

fn render_rules(args: &RenderArgs) -> ExitCode {
    let spec = match PolicySpec::load(&args.config) {
        Ok(spec) => spec,
        Err(e) => {
            report_policy_error(&e);
            return ExitCode::from(EXIT_INVALID_POLICY);
        }
    };
    let rendered = render(&spec, args.target(), args.format);
    print!("{}", rendered.text);
    for warning in &rendered.warnings {
        eprintln!("warning: {warning}");
    }
    if args.strict && !rendered.warnings.is_empty() {
        eprintln!(
            "imds-guard: --strict: {} warning(s); the rules do not say everything the policy says",
            rendered.warnings.len()
        );
        return ExitCode::from(EXIT_STRICT);
    }
    ExitCode::SUCCESS
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
