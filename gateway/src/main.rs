//! The `gateway` command: run the proxy, check config files, explain a routing decision,
//! hash an API key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// mimalloc: fewer instructions per proxied request than the system allocator (see
// shared DESIGN.md, "Build for speed"), entered by its plain calls where they already
// give the alignment asked for (`gateway::alloc`).
#[global_allocator]
static GLOBAL: gateway::alloc::MiMalloc = gateway::alloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "API gateway on Pingora: YAML routes, hot reload, admin API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. The config file is watched and reloaded on change or SIGHUP;
    /// SIGTERM/SIGINT drain in-flight requests and exit 0.
    Run {
        /// Gateway YAML config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate config files; prints every error as file:line:col: path: message.
    /// Exits 0 when all files are valid, 1 otherwise.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Show which route a request would take, why others did not match, the actions
    /// applied and the upstream pool chosen.
    Explain {
        /// Gateway YAML config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Request method, e.g. GET.
        method: String,
        /// Full URL (http://host/path?query) or just a path (/path?query).
        url: String,
        /// Extra request header, 'name: value'; repeatable.
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
    },
    /// Print the SHA-256 digest (hex) of an API key read from stdin, for `consumers[].keys`
    /// or a `keys_file`; one trailing newline is ignored: `printf %s "$KEY" | gateway hash-key`.
    HashKey,
}

fn hash_key() -> ExitCode {
    use std::io::Read;
    let mut key = Vec::new();
    if let Err(e) = std::io::stdin().take(64 * 1024).read_to_end(&mut key) {
        eprintln!("gateway hash-key: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    if key.ends_with(b"\n") {
        key.pop();
        if key.ends_with(b"\r") {
            key.pop();
        }
    }
    if key.is_empty() {
        eprintln!("gateway hash-key: no key on stdin");
        return ExitCode::FAILURE;
    }
    if key.len() > gateway::apikey::MAX_KEY_BYTES {
        eprintln!(
            "gateway hash-key: keys longer than {} bytes are never accepted",
            gateway::apikey::MAX_KEY_BYTES
        );
        return ExitCode::FAILURE;
    }
    println!("{}", hex::encode(gateway::apikey::digest(&key)));
    ExitCode::SUCCESS
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .try_init();
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match gateway::config::load(file) {
            Err(errors) => {
                ok = false;
                eprintln!("{errors}");
            }
            Ok((spec, _)) => match gateway::runtime::compile(&spec, 1, None) {
                Ok(rt) => println!(
                    "{}: ok ({} routes, {} upstreams)",
                    file.display(),
                    rt.routes.len(),
                    rt.upstreams.len()
                ),
                Err(errors) => {
                    ok = false;
                    for e in errors {
                        eprintln!("{}: {}: {}", file.display(), e.path, e.message);
                    }
                }
            },
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn explain(config: &std::path::Path, method: &str, url: &str, headers: &[String]) -> ExitCode {
    let spec = match gateway::config::load(config) {
        Ok((spec, _)) => spec,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match gateway::runtime::compile(&spec, 1, None) {
        Ok(rt) => rt,
        Err(errors) => {
            for e in errors {
                eprintln!("{}: {}: {}", config.display(), e.path, e.message);
            }
            return ExitCode::FAILURE;
        }
    };
    match gateway::explain::build_request(method, url, headers) {
        Ok(req) => {
            print!("{}", gateway::explain::explain(&runtime, &req));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging();
            match gateway::server::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gateway: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { files } => check(&files),
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => explain(&config, &method, &url, &headers),
        Command::HashKey => hash_key(),
    }
}
