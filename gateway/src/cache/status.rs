//! Owns what the cache says about each response: one `Outcome` per request, rendered
//! as the `Cache-Status` header (RFC 9211) and as the metric label.

use pingora::cache::{CachePhase, NoCacheReason};

/// The cache's part in one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served fresh from the cache.
    Hit,
    /// Served stale while one background request refreshes it.
    StaleWhileRevalidate,
    /// Served stale because the origin failed.
    StaleIfError,
    /// Nothing stored for this URL; `stored` says whether the answer was.
    Miss { stored: bool, vary: bool },
    /// A stale entry was replaced by a full response.
    Refreshed { stored: bool },
    /// A stale entry was revalidated with a 304.
    Revalidated,
    /// Looked up but not stored: the response (or a limit) forbade it.
    NotStored { reason: NoCacheReason, vary: bool },
    /// Not looked up: predicted uncacheable, or the lock wait timed out.
    Bypass { reason: NoCacheReason },
    /// The method is not cacheable (POST, PUT, ...): forwarded.
    Method,
}

impl Outcome {
    /// Classify from Pingora's cache phase at response time.
    pub fn from_phase(
        phase: CachePhase,
        looked_up: bool,
        vary_miss: bool,
        method_ok: bool,
    ) -> Self {
        match phase {
            CachePhase::Hit => Outcome::Hit,
            CachePhase::StaleUpdating => Outcome::StaleWhileRevalidate,
            // Still stale at response time: the origin failed and the stored copy went out.
            CachePhase::Stale => Outcome::StaleIfError,
            CachePhase::Expired => Outcome::Refreshed { stored: true },
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated,
            CachePhase::Miss => Outcome::Miss {
                stored: true,
                vary: vary_miss,
            },
            CachePhase::Disabled(NoCacheReason::NeverEnabled) if !method_ok => Outcome::Method,
            CachePhase::Disabled(reason) if looked_up => Outcome::NotStored {
                reason,
                vary: vary_miss,
            },
            CachePhase::Disabled(reason) => Outcome::Bypass { reason },
            CachePhase::Bypass => Outcome::Bypass {
                reason: NoCacheReason::Custom("predicted-uncacheable"),
            },
            CachePhase::Uninit | CachePhase::CacheKey => Outcome::Bypass {
                reason: NoCacheReason::NeverEnabled,
            },
        }
    }

    /// Metric label: hit, stale, miss, expired, revalidated, uncacheable, bypass.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::StaleWhileRevalidate | Outcome::StaleIfError => "stale",
            Outcome::Miss { .. } => "miss",
            Outcome::Refreshed { .. } => "expired",
            Outcome::Revalidated => "revalidated",
            Outcome::NotStored { .. } => "uncacheable",
            Outcome::Bypass { .. } | Outcome::Method => "bypass",
        }
    }

    /// The `Cache-Status` value. `ttl` is seconds of freshness left (negative when
    /// stale), `fwd_status` the origin's status when the request went there,
    /// `collapsed` whether it waited for another request's fill.
    pub fn header(
        self,
        name: &str,
        ttl: Option<i64>,
        fwd_status: Option<u16>,
        collapsed: bool,
    ) -> String {
        let mut s = String::with_capacity(64);
        s.push_str(name);
        let fwd = |s: &mut String, kind: &str| {
            s.push_str("; fwd=");
            s.push_str(kind);
            if let Some(code) = fwd_status {
                s.push_str("; fwd-status=");
                s.push_str(&code.to_string());
            }
        };
        let mut detail = None;
        let mut stored_flag = false;
        let mut with_ttl = false;
        match self {
            Outcome::Hit => {
                s.push_str("; hit");
                with_ttl = true;
            }
            Outcome::StaleWhileRevalidate => {
                s.push_str("; hit");
                with_ttl = true;
                detail = Some("stale-while-revalidate");
            }
            Outcome::StaleIfError => {
                fwd(&mut s, "stale");
                with_ttl = true;
                detail = Some("stale-if-error");
            }
            Outcome::Miss { stored, vary } => {
                fwd(&mut s, if vary { "vary-miss" } else { "uri-miss" });
                stored_flag = stored;
            }
            Outcome::Refreshed { stored } => {
                fwd(&mut s, "stale");
                stored_flag = stored;
            }
            Outcome::Revalidated => {
                fwd(&mut s, "stale");
                with_ttl = true;
            }
            Outcome::NotStored { reason, vary } => {
                fwd(&mut s, if vary { "vary-miss" } else { "uri-miss" });
                detail = Some(reason_token(reason));
            }
            Outcome::Bypass { reason } => {
                fwd(&mut s, "bypass");
                detail = Some(reason_token(reason));
            }
            Outcome::Method => fwd(&mut s, "method"),
        }
        if with_ttl && let Some(t) = ttl {
            s.push_str("; ttl=");
            s.push_str(&t.to_string());
        }
        if stored_flag {
            s.push_str("; stored");
        }
        if collapsed {
            s.push_str("; collapsed");
        }
        if let Some(d) = detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        s
    }
}

/// A structured-field token for why nothing was stored.
fn reason_token(reason: NoCacheReason) -> &'static str {
    match reason {
        NoCacheReason::Custom(c) => c,
        NoCacheReason::OriginNotCache => "origin-not-cacheable",
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::CacheLockTimeout => "lock-timeout",
        NoCacheReason::CacheLockGiveUp => "lock-give-up",
        NoCacheReason::UpstreamError => "upstream-error",
        NoCacheReason::DeclinedToUpstream => "declined",
        NoCacheReason::NeverEnabled => "not-enabled",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc_9211() {
        type Case = (Outcome, Option<i64>, Option<u16>, bool, &'static str);
        let cases: &[Case] = &[
            (Outcome::Hit, Some(30), None, false, "gw; hit; ttl=30"),
            (
                Outcome::Miss {
                    stored: true,
                    vary: false,
                },
                None,
                Some(200),
                false,
                "gw; fwd=uri-miss; fwd-status=200; stored",
            ),
            (
                Outcome::Miss {
                    stored: true,
                    vary: false,
                },
                None,
                Some(200),
                true,
                "gw; fwd=uri-miss; fwd-status=200; stored; collapsed",
            ),
            (
                Outcome::Miss {
                    stored: true,
                    vary: true,
                },
                None,
                Some(200),
                false,
                "gw; fwd=vary-miss; fwd-status=200; stored",
            ),
            (
                Outcome::Revalidated,
                Some(60),
                Some(304),
                false,
                "gw; fwd=stale; fwd-status=304; ttl=60",
            ),
            (
                Outcome::StaleWhileRevalidate,
                Some(-2),
                None,
                false,
                "gw; hit; ttl=-2; detail=stale-while-revalidate",
            ),
            (
                Outcome::StaleIfError,
                Some(-5),
                Some(503),
                false,
                "gw; fwd=stale; fwd-status=503; ttl=-5; detail=stale-if-error",
            ),
            (
                Outcome::NotStored {
                    reason: NoCacheReason::OriginNotCache,
                    vary: false,
                },
                None,
                Some(200),
                false,
                "gw; fwd=uri-miss; fwd-status=200; detail=origin-not-cacheable",
            ),
            (
                Outcome::Method,
                None,
                Some(201),
                false,
                "gw; fwd=method; fwd-status=201",
            ),
        ];
        for (o, ttl, st, collapsed, want) in cases {
            assert_eq!(o.header("gw", *ttl, *st, *collapsed), *want);
        }
    }

    #[test]
    fn classifies_phases() {
        use CachePhase as P;
        let f = Outcome::from_phase;
        assert_eq!(f(P::Hit, true, false, true), Outcome::Hit);
        assert_eq!(
            f(P::StaleUpdating, true, false, true),
            Outcome::StaleWhileRevalidate
        );
        assert_eq!(f(P::Stale, true, false, true), Outcome::StaleIfError);
        assert_eq!(
            f(P::Miss, true, true, true),
            Outcome::Miss {
                stored: true,
                vary: true
            }
        );
        assert_eq!(
            f(
                P::Disabled(NoCacheReason::NeverEnabled),
                false,
                false,
                false
            ),
            Outcome::Method
        );
        assert_eq!(
            f(
                P::Disabled(NoCacheReason::OriginNotCache),
                true,
                false,
                true
            ),
            Outcome::NotStored {
                reason: NoCacheReason::OriginNotCache,
                vary: false
            }
        );
        assert_eq!(f(P::Bypass, false, false, true).label(), "bypass");
    }
}
