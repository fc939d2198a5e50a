//! Staged rollout of an update channel: which machines take which version.
//!
//! A channel's `ROLLOUT` document (listed in its signed `SHA256SUMS`, so
//! the listing's signature covers it) holds one line per release:
//!
//! ```text
//! kiln-rollout 1 CHANNEL
//! release IMAGE VERSION SINCE START DURATION active|paused barrier|-
//! ```
//!
//! `SINCE` is when the wave (re)started (Unix seconds), `START` the share
//! of machines admitted then, in basis points (1/100 of a percent), and
//! `DURATION` the seconds it takes to grow linearly to every machine. A
//! paused release admits no machine; its `START` and `DURATION` hold the
//! share reached and the time left, so resuming goes on from there.
//!
//! A machine's place in the wave is the first 32 bits of
//! `sha256(MACHINE_ID ":" CHANNEL)` scaled to basis points: stable for the
//! machine, independent between channels, the same in every language (the
//! image's update gate computes it with `sha256sum` and shell arithmetic).
//! The machine takes the newest admitted release newer than what it runs,
//! but never past a barrier release newer than what it runs: it passes
//! through the oldest such barrier first.

use std::cmp::Ordering;

use sha2::{Digest, Sha256};

use crate::sdversion;

/// The document's file name in the channel.
pub const FILE: &str = "ROLLOUT";
/// Every machine, in basis points.
pub const ALL: u32 = 10_000;
/// Larger documents are refused (a hostile channel).
pub const MAX_SIZE: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub image: String,
    pub version: String,
    /// When the wave (re)started, Unix seconds.
    pub since: i64,
    /// Share admitted at `since`, basis points.
    pub start: u32,
    /// Seconds from `since` until every machine is admitted.
    pub duration: i64,
    pub paused: bool,
    pub barrier: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub channel: String,
    pub releases: Vec<Release>,
}

/// A wave as `kiln release --wave` takes it: `P%` or `P%/DURATION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wave {
    pub start: u32,
    pub duration: i64,
}

/// `10%/24h`, `2.5%/3d`, `100%`, `0%/90m`: the start share (at most two
/// decimals, 0–100 %) and the time to reach every machine (`s`, `m`, `h`,
/// `d`, `w`).
pub fn parse_wave(s: &str) -> Result<Wave, String> {
    let (p, d) = match s.split_once('/') {
        Some((p, d)) => (p, Some(d)),
        None => (s, None),
    };
    let p = p
        .strip_suffix('%')
        .ok_or_else(|| format!("`{s}`: the wave starts with a percentage, as in 10%/24h"))?;
    let (int, frac) = p.split_once('.').unwrap_or((p, ""));
    if int.is_empty()
        || int.len() > 3
        || frac.len() > 2
        || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
    {
        return Err(format!(
            "`{s}`: `{p}%` is not a percentage (at most two decimals)"
        ));
    }
    let bp = int.parse::<u32>().unwrap() * 100 + format!("{frac:0<2}").parse::<u32>().unwrap();
    if bp > ALL {
        return Err(format!(
            "`{s}`: a wave cannot start with more than 100% of the machines"
        ));
    }
    let duration = match d {
        None => 0,
        Some(d) => parse_duration(d).map_err(|e| format!("`{s}`: {e}"))?,
    };
    if bp < ALL && duration == 0 {
        return Err(format!(
            "`{s}`: a wave that starts below 100% needs the time it takes to reach every machine, as in {p}%/24h"
        ));
    }
    Ok(Wave {
        start: bp,
        duration,
    })
}

/// `90s`, `30m`, `24h`, `3d`, `2w` → seconds (at most a year).
pub fn parse_duration(d: &str) -> Result<i64, String> {
    let unit = d.chars().last().unwrap_or(' ');
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => {
            return Err(format!(
                "`{d}` is not a duration: a number and s, m, h, d or w, as in 24h"
            ))
        }
    };
    let n: i64 = d[..d.len() - 1]
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("`{d}` is not a duration: a number and s, m, h, d or w"))?;
    n.checked_mul(scale)
        .filter(|s| *s <= 366 * 86_400)
        .ok_or_else(|| format!("`{d}`: a wave lasts at most a year"))
}

/// `12.5%`.
pub fn percent(bp: u32) -> String {
    let s = format!("{}.{:02}", bp / 100, bp % 100);
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

/// The machine's place in the channel's waves, basis points (0–9999).
pub fn place(machine_id: &str, channel: &str) -> u32 {
    let h = Sha256::digest(format!("{machine_id}:{channel}").as_bytes());
    let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
    ((first * ALL as u64) >> 32) as u32
}

impl Release {
    /// The share admitted at `now`, basis points.
    pub fn share(&self, now: i64) -> u32 {
        if self.paused {
            return 0;
        }
        if self.duration <= 0 {
            return ALL;
        }
        let elapsed = (now - self.since).clamp(0, self.duration);
        let grown = (ALL - self.start) as i64 * elapsed / self.duration;
        self.start + grown as u32
    }

    pub fn admits(&self, place: u32, now: i64) -> bool {
        place < self.share(now)
    }

    /// Paused at `now`: the share reached and the time left are kept.
    pub fn pause(&mut self, now: i64) {
        if self.paused {
            return;
        }
        let share = self.share(now);
        let left = if self.duration <= 0 {
            0
        } else {
            (self.duration - (now - self.since).clamp(0, self.duration)).max(0)
        };
        self.start = share;
        self.duration = if share >= ALL { 0 } else { left.max(1) };
        self.since = now;
        self.paused = true;
    }

    pub fn resume(&mut self, now: i64) {
        if self.paused {
            self.paused = false;
            self.since = now;
        }
    }

    /// `rolling`, `complete` or `paused` at `now`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.paused {
            "paused"
        } else if self.share(now) >= ALL {
            "complete"
        } else {
            "rolling"
        }
    }

    /// When every machine is admitted (None while paused).
    pub fn complete_at(&self) -> Option<i64> {
        (!self.paused).then_some(self.since + self.duration.max(0))
    }
}

fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-+~^".contains(&c))
}

impl Rollout {
    pub fn new(channel: &str) -> Rollout {
        Rollout {
            channel: channel.to_string(),
            releases: Vec::new(),
        }
    }

    pub fn parse(text: &str) -> Result<Rollout, String> {
        if text.len() > MAX_SIZE {
            return Err("larger than 1 MiB".into());
        }
        let mut lines = text.lines().enumerate();
        let head = lines
            .next()
            .map(|(_, l)| l.split(' ').collect::<Vec<_>>())
            .unwrap_or_default();
        let channel = match head.as_slice() {
            ["kiln-rollout", "1", c] if plain(c) => c.to_string(),
            ["kiln-rollout", v, _] => {
                return Err(format!(
                    "format {v} is not known (this Kiln reads format 1)"
                ))
            }
            _ => return Err("line 1 is not `kiln-rollout 1 CHANNEL`".into()),
        };
        let mut r = Rollout::new(&channel);
        for (i, line) in lines {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("line {}", i + 1);
            let w: Vec<&str> = line.split(' ').collect();
            let [kind, image, version, since, start, duration, state, barrier] = w.as_slice()
            else {
                return Err(format!(
                    "{at}: not `release IMAGE VERSION SINCE START DURATION STATE BARRIER`"
                ));
            };
            if *kind != "release" || !plain(image) || !plain(version) {
                return Err(format!("{at}: `{line}` is not a release line"));
            }
            let num = |s: &str, what: &str| -> Result<i64, String> {
                if s.is_empty() || s.len() > 12 || !s.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(format!("{at}: {what} `{s}` is not a number"));
                }
                Ok(s.parse().unwrap())
            };
            let start = num(start, "the start share")?;
            if start > ALL as i64 {
                return Err(format!("{at}: a share of more than 100%"));
            }
            let rel = Release {
                image: image.to_string(),
                version: version.to_string(),
                since: num(since, "the start time")?,
                start: start as u32,
                duration: num(duration, "the duration")?,
                paused: match *state {
                    "active" => false,
                    "paused" => true,
                    s => return Err(format!("{at}: state `{s}` is neither active nor paused")),
                },
                barrier: match *barrier {
                    "barrier" => true,
                    "-" => false,
                    s => return Err(format!("{at}: `{s}` is neither barrier nor -")),
                },
            };
            if r.find(image, version).is_some() {
                return Err(format!("{at}: {image} {version} is released twice"));
            }
            r.releases.push(rel);
        }
        Ok(r)
    }

    pub fn render(&self) -> String {
        let mut s = format!("kiln-rollout 1 {}\n", self.channel);
        let mut rs: Vec<&Release> = self.releases.iter().collect();
        rs.sort_by(|a, b| {
            a.image
                .cmp(&b.image)
                .then_with(|| sdversion::compare(&a.version, &b.version))
        });
        for r in rs {
            s.push_str(&format!(
                "release {} {} {} {} {} {} {}\n",
                r.image,
                r.version,
                r.since,
                r.start,
                r.duration,
                if r.paused { "paused" } else { "active" },
                if r.barrier { "barrier" } else { "-" }
            ));
        }
        s
    }

    pub fn find(&self, image: &str, version: &str) -> Option<&Release> {
        self.releases
            .iter()
            .find(|r| r.image == image && r.version == version)
    }

    pub fn find_mut(&mut self, image: &str, version: &str) -> Option<&mut Release> {
        self.releases
            .iter_mut()
            .find(|r| r.image == image && r.version == version)
    }

    /// The version a machine of `image` running `current` at `place` is to
    /// take at `now`, if any.
    pub fn target(&self, image: &str, current: &str, place: u32, now: i64) -> Option<&Release> {
        let newer = |r: &&Release| {
            r.image == image && sdversion::compare(&r.version, current) == Ordering::Greater
        };
        let barrier = self
            .releases
            .iter()
            .filter(newer)
            .filter(|r| r.barrier)
            .min_by(|a, b| sdversion::compare(&a.version, &b.version));
        self.releases
            .iter()
            .filter(newer)
            .filter(|r| {
                barrier
                    .is_none_or(|b| sdversion::compare(&r.version, &b.version) != Ordering::Greater)
            })
            .filter(|r| r.admits(place, now))
            .max_by(|a, b| sdversion::compare(&a.version, &b.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(v: &str, since: i64, start: u32, duration: i64) -> Release {
        Release {
            image: "img".into(),
            version: v.into(),
            since,
            start,
            duration,
            paused: false,
            barrier: false,
        }
    }

    #[test]
    fn waves_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_wave("10%/24h"),
            Ok(Wave {
                start: 1000,
                duration: 86_400
            })
        );
        assert_eq!(parse_wave("2.5%/3d").unwrap().start, 250);
        assert_eq!(
            parse_wave("100%").unwrap(),
            Wave {
                start: ALL,
                duration: 0
            }
        );
        assert_eq!(parse_wave("0%/90m").unwrap().duration, 5400);
        for bad in [
            "150%",
            "100.01%",
            "10",
            "10%/",
            "10%/5y",
            "-1%/1h",
            "10%",
            "1.234%/1h",
            "%/1h",
            "10%/9999d",
            "10%/h",
        ] {
            assert!(parse_wave(bad).is_err(), "{bad}");
        }
        assert!(parse_wave("150%/1h")
            .unwrap_err()
            .contains("more than 100%"));
        assert_eq!(percent(1000), "10%");
        assert_eq!(percent(1250), "12.5%");
        assert_eq!(percent(5), "0.05%");
    }

    #[test]
    fn places_are_sha256_based_and_spread() {
        // sha256("a:stable") begins with these 32 bits (sha256sum agrees).
        let h = Sha256::digest(b"a:stable");
        let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
        assert_eq!(place("a", "stable") as u64, (first * 10_000) >> 32);
        assert_ne!(place("a", "stable"), place("a", "beta"));
        let below = (0..1000)
            .filter(|i| place(&format!("{i:032x}"), "stable") < 5000)
            .count();
        assert!((400..600).contains(&below), "{below} of 1000 below 50%");
    }

    #[test]
    fn shares_grow_pause_and_resume() {
        let mut r = rel("2", 1000, 1000, 100);
        assert_eq!(r.share(900), 1000);
        assert_eq!(r.share(1050), 5500);
        assert_eq!(r.share(5000), ALL);
        assert!(r.admits(999, 1000) && !r.admits(1000, 1000));
        r.pause(1050);
        assert_eq!((r.share(1060), r.state(1060)), (0, "paused"));
        r.resume(2000);
        assert_eq!(r.share(2000), 5500);
        assert_eq!(r.share(2050), ALL);
        assert_eq!(r.state(2050), "complete");
        let whole = rel("3", 0, ALL, 0);
        assert!(whole.admits(9999, 0));
    }

    #[test]
    fn targets_take_the_newest_admitted_but_stop_at_barriers() {
        let mut r = Rollout::new("stable");
        r.releases.push(rel("2", 0, ALL, 0));
        r.releases.push(rel("10", 0, 5000, 1000));
        let t = |r: &Rollout, cur: &str, place: u32| {
            r.target("img", cur, place, 0).map(|x| x.version.clone())
        };
        assert_eq!(t(&r, "1", 100).as_deref(), Some("10"));
        assert_eq!(t(&r, "1", 7000).as_deref(), Some("2"));
        assert_eq!(t(&r, "10", 100), None);
        assert_eq!(r.target("other", "1", 100, 0), None);
        r.releases[0].barrier = true;
        assert_eq!(t(&r, "1", 100).as_deref(), Some("2"));
        assert_eq!(t(&r, "2", 100).as_deref(), Some("10"));
        // A barrier not yet admitted holds the machine.
        r.releases[0].paused = true;
        assert_eq!(t(&r, "1", 100), None);
    }

    #[test]
    fn documents_round_trip_and_hostile_ones_are_refused() {
        let mut r = Rollout::new("stable");
        r.releases.push(rel("10", 5, 1000, 86_400));
        let mut b = rel("2", 7, ALL, 0);
        b.barrier = true;
        b.paused = true;
        r.releases.push(b);
        let text = r.render();
        assert!(
            text.find("img 2 ").unwrap() < text.find("img 10 ").unwrap(),
            "{text}"
        );
        let back = Rollout::parse(&text).unwrap();
        assert_eq!(back.render(), text);
        assert!(back.find("img", "2").unwrap().paused);
        for bad in [
            "",
            "kiln-rollout 2 stable\n",
            "kiln-rollout 1 ../x\n",
            "kiln-rollout 1 stable\nrelease img 2 0 10001 0 active -\n",
            "kiln-rollout 1 stable\nrelease img 2 0 100 0 active\n",
            "kiln-rollout 1 stable\nrelease img/.. 2 0 100 0 active -\n",
            "kiln-rollout 1 stable\nrelease img 2 -5 100 0 active -\n",
            "kiln-rollout 1 stable\nrelease img 2 0 100 0 running -\n",
            "kiln-rollout 1 stable\nrelease img 2 0 100 0 active yes\n",
            "kiln-rollout 1 stable\nrelease img 2 0 100 0 active -\nrelease img 2 0 100 0 active -\n",
            "kiln-rollout 1 stable\nrelease img 2 0 100 99999999999999 active -\n",
            "kiln-rollout 1 stable\nrelease img $(reboot) 0 100 0 active -\n",
        ] {
            assert!(Rollout::parse(bad).is_err(), "{bad:?}");
        }
    }
}
