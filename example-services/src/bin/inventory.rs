//! `inventory`: run the sample gRPC service (`shop.Inventory`, h2c), or call one:
//! `inventory get SKU --url http://127.0.0.1:8080` and `inventory list` print the
//! answers as JSON (there is no grpcurl on this machine: this is the client).

use clap::{Parser, Subcommand};
use example_services::inventory::{
    GetItemRequest, Inventory, InventoryClient, Item, ListItemsRequest,
};
use tokio_stream::StreamExt;

#[derive(Parser)]
#[command(
    name = "inventory",
    about = "Sample gRPC inventory service (shop.Inventory) and client"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on (serving).
    #[arg(long, env = "INVENTORY_LISTEN", default_value = "127.0.0.1:3007")]
    listen: String,
    /// Name reported in every item (`served_by`).
    #[arg(long, env = "INVENTORY_NAME", default_value = "inventory")]
    name: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Call Get through `url` (a gateway h2c listener or the service itself).
    Get {
        sku: String,
        #[arg(long, default_value = "http://127.0.0.1:3007")]
        url: String,
    },
    /// Call List (server streaming) and print each item as it arrives.
    List {
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(long, default_value = "http://127.0.0.1:3007")]
        url: String,
    },
}

fn print(item: &Item) {
    println!(
        "{}",
        serde_json::json!({"sku": item.sku, "name": item.name, "quantity": item.quantity, "served_by": item.served_by})
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            tracing_subscriber::fmt().json().init();
            let listener = tokio::net::TcpListener::bind(&args.listen).await?;
            tracing::info!(address = %listener.local_addr()?, name = %args.name, "inventory (gRPC, h2c) listening");
            let shutdown = async {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(_) => return std::future::pending().await,
                    };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            };
            example_services::inventory::serve(listener, Inventory::new(&args.name), shutdown)
                .await?;
        }
        Command::Get { sku, url } => {
            let mut client = InventoryClient::connect(url).await?;
            match client.get(GetItemRequest { sku }).await {
                Ok(resp) => print(resp.get_ref()),
                Err(status) => anyhow::bail!("{:?}: {}", status.code(), status.message()),
            }
        }
        Command::List { limit, url } => {
            let mut client = InventoryClient::connect(url).await?;
            let mut stream = match client.list(ListItemsRequest { limit }).await {
                Ok(resp) => resp.into_inner(),
                Err(status) => anyhow::bail!("{:?}: {}", status.code(), status.message()),
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(item) => print(&item),
                    Err(status) => anyhow::bail!("{:?}: {}", status.code(), status.message()),
                }
            }
        }
    }
    Ok(())
}
