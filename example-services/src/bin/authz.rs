//! `authz`: run the forward-auth check service. Address, database, login URL, rules and
//! seed sessions from flags or env.

use std::sync::Arc;

use clap::Parser;
use example_services::authz::{self, AuthzConfig, AuthzState, Rule};
use example_services::common::{db, http::Metrics, serve};

#[derive(Parser)]
#[command(name = "authz", about = "Forward-auth check service (GET /check)")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "AUTHZ_LISTEN", default_value = "127.0.0.1:3006")]
    listen: String,
    /// SQLite database file (created when missing), or a sqlite: URL.
    #[arg(long, env = "AUTHZ_DATABASE", default_value = "authz.db")]
    database: String,
    /// Where browsers without a session are redirected (`?rd=` the original URI).
    #[arg(long, env = "AUTHZ_LOGIN_URL", default_value = "/login")]
    login_url: String,
    /// `ROLE=PREFIX`: paths under PREFIX need ROLE (repeatable or comma-separated).
    #[arg(long = "rule", env = "AUTHZ_RULES", value_delimiter = ',', value_parser = Rule::parse)]
    rules: Vec<Rule>,
    /// `TOKEN=USER[:ROLE,ROLE]` sessions to store at start, valid for a day (repeatable;
    /// space-separated in the environment).
    #[arg(long = "session", env = "AUTHZ_SESSIONS", value_delimiter = ' ')]
    sessions: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_logging();
    let _tracing = example_services::common::trace::init("authz");
    let args = Args::parse();
    let pool = db::open(&args.database, authz::SCHEMA).await?;
    for raw in &args.sessions {
        let (token, user, roles) = authz::parse_session(raw).map_err(anyhow::Error::msg)?;
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        authz::add_session(&pool, &token, &user, &roles, 24 * 3600).await?;
    }
    let metrics = Arc::new(Metrics::new("authz")?);
    let state = AuthzState {
        db: pool.clone(),
        config: Arc::new(AuthzConfig {
            login_url: args.login_url,
            rules: args.rules,
        }),
    };
    serve::serve("authz", &args.listen, authz::app(state, metrics)).await?;
    pool.close().await;
    Ok(())
}
