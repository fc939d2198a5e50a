//! Image versions ordered as systemd orders them (`strverscmp_improved`:
//! systemd-sysupdate picks the newest version with it, systemd-boot sorts
//! its entries with it), so Kiln, the update channel and the machine agree
//! on which version is newer.
//!
//! The rules, segment by segment: characters other than letters, digits
//! and `~-^.` are skipped; `~` marks a pre-release (older than anything
//! without it); a string that ends first is older; `-`, then `^`, then `.`
//! at the same place: the side without the separator is newer; digit runs
//! compare by value (leading zeros ignored) and are newer than letters;
//! letter runs compare as text, the longer one newer when one is a prefix.

use std::cmp::Ordering;

fn valid(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"~-^.".contains(&c)
}

/// Compares two versions the way systemd does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    loop {
        while a.first().is_some_and(|&c| !valid(c)) {
            a = &a[1..];
        }
        while b.first().is_some_and(|&c| !valid(c)) {
            b = &b[1..];
        }
        let (x, y) = (a.first().copied(), b.first().copied());
        if x == Some(b'~') || y == Some(b'~') {
            let r = (x != Some(b'~')).cmp(&(y != Some(b'~')));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[1..];
            b = &b[1..];
        }
        if a.is_empty() || b.is_empty() {
            return a.cmp(b);
        }
        for sep in [b'-', b'^', b'.'] {
            let (x, y) = (a[0], b[0]);
            if x == sep || y == sep {
                let r = (x != sep).cmp(&(y != sep));
                if r != Ordering::Equal {
                    return r;
                }
                a = &a[1..];
                b = &b[1..];
                if a.is_empty() || b.is_empty() {
                    // What the next segment comparison sees: an empty
                    // segment against whatever the other side has.
                    break;
                }
            }
        }
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let alphas = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_alphabetic()).count();
        let starts_digit = |s: &[u8]| s.first().is_some_and(|c| c.is_ascii_digit());
        if starts_digit(a) || starts_digit(b) {
            let (na, nb) = (digits(a), digits(b));
            let r = (na != 0).cmp(&(nb != 0));
            if r != Ordering::Equal {
                return r;
            }
            let (da, db) = (&a[..na], &b[..nb]);
            let strip = |d: &[u8]| {
                let z = d.iter().take_while(|&&c| c == b'0').count();
                d[z..].to_vec()
            };
            let (sa, sb) = (strip(da), strip(db));
            let r = sa.len().cmp(&sb.len()).then_with(|| sa.cmp(&sb));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[na..];
            b = &b[nb..];
        } else {
            let (na, nb) = (alphas(a), alphas(b));
            let n = na.min(nb);
            let r = a[..n].cmp(&b[..n]).then(na.cmp(&nb));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[na..];
            b = &b[nb..];
        }
        if a.is_empty() && b.is_empty() {
            return Ordering::Equal;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::*;

    #[test]
    fn orders_like_systemd() {
        // Each list is oldest first (cases from systemd's documented rules).
        let ordered = [
            "1~rc1",
            "1",
            "1.0",
            "1.1",
            "1.2",
            "1.10",
            "2",
            "2^patch",
            "2.0",
            "10",
            "13",
            "13.1",
            "13.1.1",
            "20261207",
            "20261207.1",
            "20261207.2",
            "20261208",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(compare("123-9", "123.1-1"), Less);
        assert_eq!(compare("00123", "123"), Equal);
        assert_eq!(compare("abc", "abcde"), Less);
        assert_eq!(compare("1a", "11"), Less);
        assert_eq!(compare("4.5~alpha1", "4.5"), Less);
        assert_eq!(compare("", "1"), Less);
    }
}
