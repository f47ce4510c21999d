//! `echo`: run the echo service. Port and name come from flags or the environment.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "echo",
    about = "Echo service: answers every request with a JSON description of it"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ECHO_LISTEN", default_value = "127.0.0.1:3001")]
    listen: String,
    /// Name reported in responses (x-served-by).
    #[arg(long, env = "ECHO_NAME", default_value = "echo")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().json().init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    tracing::info!(address = %listener.local_addr()?, name = %args.name, "echo listening");
    axum::serve(listener, example_services::echo::app(&args.name))
        .with_graceful_shutdown(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        })
        .await?;
    Ok(())
}
