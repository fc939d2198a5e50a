//! Name lookups for the fetcher: once per host and run, and hedged.
//!
//! Measured here (stop 29): the system resolver answers most lookups of a
//! mirror's name at once, but drops some queries, and more of them when
//! several lookups run together (6 of 60 with six threads). glibc then waits
//! its full `timeout:5` before asking again, so a download that opened a new
//! connection stalled exactly 5 s. Two things take that away:
//!
//! - every connection of a [`crate::Fetcher`] shares one answer per host
//!   (the threads wanting the same host wait for one lookup, not one each),
//!   kept for [`TTL`];
//! - a lookup not answered within [`HEDGE_AFTER`] is asked again beside the
//!   first (then again after twice as long, up to [`MAX_LOOKUPS`]), and the
//!   first answer wins. A lost query costs a fraction of a second.
//!
//! A name that does not resolve is not remembered: the next try asks again.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long an answer is used before the name is looked up again.
pub const TTL: Duration = Duration::from_secs(60);
/// How long the first lookup has before a second one is sent beside it.
pub const HEDGE_AFTER: Duration = Duration::from_millis(400);
/// The most lookups of one name in flight at once.
pub const MAX_LOOKUPS: usize = 4;

/// The system lookup (`getaddrinfo`), replaceable in tests.
pub type Lookup = dyn Fn(&str) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

#[derive(Default)]
struct Slot {
    answer: Option<(Vec<SocketAddr>, Instant)>,
}

/// A [`Resolver`] that looks each `host:port` up once (hedged) and shares it.
pub struct SharedResolver {
    lookup: Arc<Lookup>,
    slots: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    hedge_after: Duration,
}

impl fmt::Debug for SharedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedResolver").finish_non_exhaustive()
    }
}

impl Default for SharedResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedResolver {
    /// Looks names up with the system resolver.
    pub fn new() -> SharedResolver {
        SharedResolver::with_lookup(
            Arc::new(|addr: &str| addr.to_socket_addrs().map(|a| a.collect())),
            HEDGE_AFTER,
        )
    }

    /// Looks names up with `lookup`, hedging after `hedge_after`.
    pub fn with_lookup(lookup: Arc<Lookup>, hedge_after: Duration) -> SharedResolver {
        SharedResolver {
            lookup,
            slots: Mutex::new(HashMap::new()),
            hedge_after,
        }
    }

    /// The addresses of `host_port` (`name:port`), waiting at most `budget`.
    pub fn addresses(
        &self,
        host_port: &str,
        budget: Option<Duration>,
    ) -> std::io::Result<Vec<SocketAddr>> {
        let slot = self
            .slots
            .lock()
            .unwrap()
            .entry(host_port.to_string())
            .or_default()
            .clone();
        // One lookup per name at a time: the others wait for its answer.
        let mut slot = slot.lock().unwrap();
        if let Some((addrs, at)) = &slot.answer {
            if at.elapsed() < TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs = hedged(&self.lookup, host_port, self.hedge_after, budget)?;
        slot.answer = Some((addrs.clone(), Instant::now()));
        Ok(addrs)
    }
}

/// Runs `lookup` on its own thread; if it has not answered after `wait`,
/// another beside it (the wait doubling), and returns the first success —
/// or, once every lookup has failed, the last error.
fn hedged(
    lookup: &Arc<Lookup>,
    host_port: &str,
    wait: Duration,
    budget: Option<Duration>,
) -> std::io::Result<Vec<SocketAddr>> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let spawn = |tx: mpsc::Sender<std::io::Result<Vec<SocketAddr>>>| {
        let lookup = lookup.clone();
        let name = host_port.to_string();
        // A lookup that never answers is left to finish on its own.
        std::thread::spawn(move || {
            let _ = tx.send(lookup(&name));
        });
    };
    spawn(tx.clone());
    // `tx` is held here, so the channel is never disconnected: a receive
    // ends with an answer or at the timeout.
    let (mut sent, mut failed) = (1, 0);
    let mut wait = wait;
    let mut last_err = None;
    loop {
        let mut timeout = if sent < MAX_LOOKUPS {
            wait
        } else {
            Duration::from_secs(3600)
        };
        if let Some(b) = budget {
            match b.checked_sub(start.elapsed()) {
                Some(left) if !left.is_zero() => timeout = timeout.min(left),
                _ => return Err(last_err.unwrap_or_else(timed_out)),
            }
        }
        match rx.recv_timeout(timeout) {
            Ok(Ok(addrs)) if !addrs.is_empty() => return Ok(addrs),
            Ok(r) => {
                failed += 1;
                let e = r.err().unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address for this name")
                });
                if failed == sent {
                    // Every lookup sent has failed (a quick failure, such as
                    // no such name, is the answer: asking again would only
                    // repeat it).
                    return Err(e);
                }
                last_err = Some(e);
            }
            Err(_) => {
                if sent < MAX_LOOKUPS {
                    spawn(tx.clone());
                    sent += 1;
                    wait *= 2;
                }
            }
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "name lookup timed out")
}

impl Resolver for SharedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ureq::Error::BadUri(uri.to_string()));
        };
        let host_port =
            ureq::unversioned::resolver::DefaultResolver::host_and_port(scheme, authority)
                .ok_or_else(|| ureq::Error::BadUri(format!("unknown scheme in {uri}")))?;
        let budget = (!timeout.after.is_not_happening()).then(|| *timeout.after);
        let addrs = self
            .addresses(&host_port, budget)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => ureq::Error::Timeout(timeout.reason),
                std::io::ErrorKind::NotFound => ureq::Error::HostNotFound,
                _ => ureq::Error::Io(e),
            })?;
        let mut out = self.empty();
        for a in config.ip_family().keep_wanted(addrs.into_iter()).take(16) {
            out.push(a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_lost_query_is_asked_again_and_the_second_answer_used() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        // The first lookup never answers, as a dropped query in glibc's
        // five-second wait; the second answers.
        let (_hold, never) = mpsc::channel::<()>();
        let never = Mutex::new(never);
        let r = SharedResolver::with_lookup(
            Arc::new(move |_: &str| {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = never.lock().unwrap().recv();
                }
                Ok(vec![addr("192.0.2.7:80")])
            }),
            Duration::from_millis(20),
        );
        let got = r.addresses("mirror.invalid:80", None).unwrap();
        assert_eq!(got, vec![addr("192.0.2.7:80")]);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn many_connections_to_one_host_share_one_lookup() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let r = Arc::new(SharedResolver::with_lookup(
            Arc::new(move |name: &str| {
                c.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                Ok(vec![if name.starts_with("a.") {
                    addr("192.0.2.1:80")
                } else {
                    addr("192.0.2.2:80")
                }])
            }),
            Duration::from_secs(10),
        ));
        let threads: Vec<_> = (0..24)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let host = if i % 2 == 0 {
                        "a.invalid:80"
                    } else {
                        "b.invalid:80"
                    };
                    r.addresses(host, None).unwrap()
                })
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            let want = if i % 2 == 0 {
                "192.0.2.1:80"
            } else {
                "192.0.2.2:80"
            };
            assert_eq!(t.join().unwrap(), vec![addr(want)]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one lookup per host");
    }

    #[test]
    fn a_name_that_does_not_resolve_is_an_error_and_not_remembered() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let r = SharedResolver::with_lookup(
            Arc::new(move |_: &str| {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(std::io::Error::other("Name or service not known"))
                } else {
                    Ok(vec![addr("192.0.2.9:443")])
                }
            }),
            Duration::from_secs(10),
        );
        let e = r.addresses("mirror.invalid:443", None).unwrap_err();
        assert!(e.to_string().contains("not known"), "{e}");
        assert_eq!(
            r.addresses("mirror.invalid:443", None).unwrap(),
            vec![addr("192.0.2.9:443")]
        );
    }

    #[test]
    fn lookups_that_never_answer_end_at_the_budget() {
        let (_hold, never) = mpsc::channel::<()>();
        let never = Mutex::new(never);
        let r = SharedResolver::with_lookup(
            Arc::new(move |_: &str| {
                let _ = never.lock().unwrap().recv();
                Ok(vec![])
            }),
            Duration::from_millis(10),
        );
        let e = r
            .addresses("mirror.invalid:80", Some(Duration::from_millis(200)))
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }
}
