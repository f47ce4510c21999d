//! Owns parsing the units config values are written in: durations (`250ms`, `5s`,
//! `1m`), byte sizes (`64KiB`, `10MiB` or a plain number) and socket addresses.
//! Each returns a message fit for a config error.
//!
//! Bottom layer: imports nothing from the rest of the crate.

use std::net::SocketAddr;
use std::time::Duration;

/// The longest timeout or interval a config may name.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A non-zero duration of at most [`MAX_TIMEOUT`].
pub fn duration(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw.trim())
        .map_err(|e| format!("invalid duration {raw:?}: {e} (write e.g. 250ms, 5s, 1m)"))?;
    if d.is_zero() {
        return Err(format!("duration {raw:?} must be greater than zero"));
    }
    if d > MAX_TIMEOUT {
        return Err(format!("duration {raw:?} is longer than the 1h maximum"));
    }
    Ok(d)
}

/// `IP:PORT`, for listeners and the admin API.
pub fn socket_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.parse::<SocketAddr>().map_err(|_| {
        format!("invalid address {raw:?}: expected IP:PORT such as 0.0.0.0:8080 or [::]:8080")
    })
}

/// A byte count: a plain number, or a number with `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`
/// (both spellings are powers of 1024, as nginx's `k` and `m` are).
pub fn size(raw: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {raw:?}: write e.g. 65536, 64KiB or 10MiB");
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("65536"), Ok(65536));
        assert_eq!(size("64KiB"), Ok(65536));
        assert_eq!(size("10 MiB"), Ok(10 << 20));
        assert_eq!(size("1g"), Ok(1 << 30));
        assert!(size("").is_err());
        assert!(size("-1").is_err());
        assert!(size("1.5MiB").is_err());
        assert!(size("10 parsecs").is_err());
        assert!(size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("0s").is_err());
        assert!(duration("2h").is_err());
        assert!(duration("soon").is_err());
    }
}
