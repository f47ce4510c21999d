//! Owns the `inventory` sample gRPC service (`shop.Inventory`, proto/inventory.proto):
//! unary `Get`, server-streaming `List`, client-streaming `Restock`, bidirectional
//! `Adjust`, over h2c with
//! tonic, plus its client. The prost messages are written by hand, field for field
//! with the .proto, so building needs no `protoc`; the service glue is what
//! tonic-build would generate, written out.
//!
//! The stock lives in memory (a small fixed catalogue at start). Two switches make
//! the service useful in front of a gateway: `draining` answers every call
//! UNAVAILABLE (as a server shutting down does), and a `pace` semaphore holds each
//! streamed item after the first until a permit is added, so a caller can prove
//! that messages arrive one by one, not buffered.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::{Code, Request, Response, Status, Streaming};

/// `shop.Inventory`.
pub const SERVICE: &str = "shop.Inventory";

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetItemRequest {
    #[prost(string, tag = "1")]
    pub sku: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListItemsRequest {
    /// At most this many items; 0 = all.
    #[prost(uint32, tag = "1")]
    pub limit: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RestockRequest {
    #[prost(string, tag = "1")]
    pub sku: String,
    #[prost(uint32, tag = "2")]
    pub quantity: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    #[prost(string, tag = "1")]
    pub sku: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint32, tag = "3")]
    pub quantity: u32,
    /// The instance that answered.
    #[prost(string, tag = "4")]
    pub served_by: String,
}

/// The service's state.
#[derive(Debug)]
pub struct Inventory {
    name: String,
    items: Mutex<BTreeMap<String, (String, u32)>>,
    draining: bool,
    pace: Option<Arc<Semaphore>>,
}

/// Longest SKU accepted, so that a caller cannot grow the table without bound.
const MAX_SKU: usize = 64;
/// Most items the table holds.
const MAX_ITEMS: usize = 10_000;

impl Inventory {
    /// An instance named `name` (in every item's `served_by`), with the sample stock.
    pub fn new(name: &str) -> Self {
        let items = [
            ("apple", "Apple", 12),
            ("banana", "Banana", 30),
            ("cherry", "Cherry", 250),
            ("date", "Date", 7),
            ("elderberry", "Elderberry", 0),
        ]
        .into_iter()
        .map(|(sku, name, q)| (sku.to_owned(), (name.to_owned(), q)))
        .collect();
        Self {
            name: name.to_owned(),
            items: Mutex::new(items),
            draining: false,
            pace: None,
        }
    }

    /// Answer every call UNAVAILABLE, as a server going away does.
    pub fn draining(mut self) -> Self {
        self.draining = true;
        self
    }

    /// Hold each streamed item after the first until `pace` has a permit for it.
    pub fn paced(mut self, pace: Arc<Semaphore>) -> Self {
        self.pace = Some(pace);
        self
    }

    fn item(&self, sku: &str, name: &str, quantity: u32) -> Item {
        Item {
            sku: sku.to_owned(),
            name: name.to_owned(),
            quantity,
            served_by: self.name.clone(),
        }
    }

    fn check(&self) -> Result<(), Status> {
        if self.draining {
            return Err(Status::unavailable(format!("{} is draining", self.name)));
        }
        Ok(())
    }

    fn get(&self, req: GetItemRequest) -> Result<Item, Status> {
        self.check()?;
        let items = self
            .items
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        match items.get(&req.sku) {
            Some((name, q)) => Ok(self.item(&req.sku, name, *q)),
            None => Err(Status::not_found(format!("no item {:?}", req.sku))),
        }
    }

    fn snapshot(&self, limit: u32) -> Result<Vec<Item>, Status> {
        self.check()?;
        let items = self
            .items
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let take = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        Ok(items
            .iter()
            .take(take)
            .map(|(sku, (name, q))| self.item(sku, name, *q))
            .collect())
    }

    fn restock(&self, req: &RestockRequest) -> Result<Item, Status> {
        if req.sku.is_empty() || req.sku.len() > MAX_SKU {
            return Err(Status::invalid_argument("sku must be 1-64 bytes"));
        }
        let mut items = self
            .items
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        if !items.contains_key(&req.sku) && items.len() >= MAX_ITEMS {
            return Err(Status::resource_exhausted("the inventory is full"));
        }
        let entry = items
            .entry(req.sku.clone())
            .or_insert_with(|| (req.sku.clone(), 0));
        entry.1 = entry.1.saturating_add(req.quantity);
        Ok(self.item(&req.sku, &entry.0, entry.1))
    }
}

type ItemStream = std::pin::Pin<Box<dyn Stream<Item = Result<Item, Status>> + Send>>;

/// The tonic service: routes `/shop.Inventory/{Get,List,Restock,Adjust}` to
/// [`Inventory`].
#[derive(Clone, Debug)]
pub struct InventoryServer {
    inner: Arc<Inventory>,
}

impl InventoryServer {
    pub fn new(inventory: Inventory) -> Self {
        Self {
            inner: Arc::new(inventory),
        }
    }
}

impl tonic::server::NamedService for InventoryServer {
    const NAME: &'static str = SERVICE;
}

/// The items one by one; with a pace, each after the first waits for its permit.
fn item_stream(
    inv: Arc<Inventory>,
    items: Vec<Item>,
) -> impl Stream<Item = Result<Item, Status>> + Send {
    tokio_stream::iter(items.into_iter().enumerate()).then(move |(i, item)| {
        let pace = inv.pace.clone();
        async move {
            if let (Some(pace), true) = (pace, i > 0) {
                match pace.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return Err(Status::cancelled("the stream was stopped")),
                }
            }
            Ok(item)
        }
    })
}

impl<B> Service<http::Request<B>> for InventoryServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inv = Arc::clone(&self.inner);
        match req.uri().path() {
            "/shop.Inventory/Get" => Box::pin(async move {
                let method = tower::service_fn(move |r: Request<GetItemRequest>| {
                    let inv = Arc::clone(&inv);
                    async move { inv.get(r.into_inner()).map(Response::new) }
                });
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(method, req).await)
            }),
            "/shop.Inventory/List" => Box::pin(async move {
                let method = tower::service_fn(move |r: Request<ListItemsRequest>| {
                    let inv = Arc::clone(&inv);
                    async move {
                        let items = inv.snapshot(r.into_inner().limit)?;
                        let stream: ItemStream = Box::pin(item_stream(inv, items));
                        Ok::<_, Status>(Response::new(stream))
                    }
                });
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(method, req).await)
            }),
            "/shop.Inventory/Restock" => Box::pin(async move {
                let method = tower::service_fn(move |r: Request<Streaming<RestockRequest>>| {
                    let inv = Arc::clone(&inv);
                    async move {
                        inv.check()?;
                        let mut stream = r.into_inner();
                        let mut last = None;
                        while let Some(delta) = stream.next().await {
                            last = Some(inv.restock(&delta?)?);
                        }
                        last.map(Response::new)
                            .ok_or_else(|| Status::invalid_argument("no restock messages"))
                    }
                });
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.client_streaming(method, req).await)
            }),
            "/shop.Inventory/Adjust" => Box::pin(async move {
                let method = tower::service_fn(move |r: Request<Streaming<RestockRequest>>| {
                    let inv = Arc::clone(&inv);
                    async move {
                        inv.check()?;
                        // Each delta answered when it arrives: the reply stream runs
                        // alongside the request stream.
                        let answers: ItemStream = Box::pin(
                            r.into_inner()
                                .map(move |delta| delta.and_then(|d| inv.restock(&d))),
                        );
                        Ok::<_, Status>(Response::new(answers))
                    }
                });
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.streaming(method, req).await)
            }),
            other => {
                let status = Status::new(
                    Code::Unimplemented,
                    format!("{other} is not a method of {SERVICE}"),
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Serve `inventory` on `listener` (h2c) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    inventory: Inventory,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(InventoryServer::new(inventory))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

/// A client of `shop.Inventory` (what tonic-build would generate, written out).
#[derive(Clone, Debug)]
pub struct InventoryClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

fn path(method: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(method)
}

impl InventoryClient {
    /// Connect (h2c) to `url`, e.g. `http://127.0.0.1:8080` for a gateway's h2c listener.
    pub async fn connect(url: String) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect()
            .await?;
        Ok(Self::new(channel))
    }

    /// A client on a channel built elsewhere (with its own `:authority`, say).
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))
    }

    pub async fn get(
        &mut self,
        req: impl tonic::IntoRequest<GetItemRequest>,
    ) -> Result<Response<Item>, Status> {
        self.ready().await?;
        self.grpc
            .unary(
                req.into_request(),
                path("/shop.Inventory/Get"),
                tonic_prost::ProstCodec::default(),
            )
            .await
    }

    pub async fn list(
        &mut self,
        req: impl tonic::IntoRequest<ListItemsRequest>,
    ) -> Result<Response<Streaming<Item>>, Status> {
        self.ready().await?;
        self.grpc
            .server_streaming(
                req.into_request(),
                path("/shop.Inventory/List"),
                tonic_prost::ProstCodec::default(),
            )
            .await
    }

    /// Bidirectional: each delta sent is answered with the item's new stock.
    pub async fn adjust(
        &mut self,
        req: impl tonic::IntoStreamingRequest<Message = RestockRequest>,
    ) -> Result<Response<Streaming<Item>>, Status> {
        self.ready().await?;
        self.grpc
            .streaming(
                req.into_streaming_request(),
                path("/shop.Inventory/Adjust"),
                tonic_prost::ProstCodec::default(),
            )
            .await
    }

    pub async fn restock(
        &mut self,
        req: impl tonic::IntoStreamingRequest<Message = RestockRequest>,
    ) -> Result<Response<Item>, Status> {
        self.ready().await?;
        self.grpc
            .client_streaming(
                req.into_streaming_request(),
                path("/shop.Inventory/Restock"),
                tonic_prost::ProstCodec::default(),
            )
            .await
    }
}
