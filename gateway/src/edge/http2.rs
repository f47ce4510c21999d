//! HTTP/2 limits of a listener (h2c and h2 over TLS) and the `h2` server settings they
//! become. The defaults bound what one connection can make the gateway do: streams
//! open at once, the decoded header list, and resets. A client that resets streams
//! faster than the gateway takes them up (rapid reset, CVE-2023-44487), or keeps
//! provoking resets with protocol errors (CVE-2025-8671), gets GOAWAY
//! ENHANCE_YOUR_CALM and loses the connection.

use pingora::protocols::http::v2::server::H2Options;

/// One listener's HTTP/2 limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_concurrent_streams: u32,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, in bytes (decoded, 32 bytes per field added as
    /// RFC 9113 section 6.5.2 counts).
    pub max_header_list_size: u32,
    /// Streams reset by the client before the gateway accepted them.
    pub max_pending_resets: u32,
    /// Streams the gateway reset because of the client's errors, over the connection.
    pub max_error_resets: u32,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_header_list_size: 32 * 1024,
            max_pending_resets: 20,
            max_error_resets: 200,
        }
    }
}

impl Http2Limits {
    /// The `h2` server settings of a new connection.
    pub fn options(&self) -> H2Options {
        let mut o = H2Options::new();
        o.max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .max_pending_accept_reset_streams(self.max_pending_resets as usize)
            .max_local_error_reset_streams(Some(self.max_error_resets as usize));
        o
    }
}
