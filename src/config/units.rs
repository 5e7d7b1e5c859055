//! Durations and sizes written the way an operator writes them in `heldar.toml`.
//!
//! Both types print back in the largest unit that represents them exactly, so `heldar config check`
//! shows `7d` rather than `604800s`, and a printed config parses back to the same values.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of time such as `90s`, `15m` or `7d`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|_| {
                format!("invalid duration {s:?}: use a number and a unit, like 90s, 15m, 7d")
            })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u128, &str); 5] = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
            (1, "ms"),
        ];
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let (unit_ms, suffix) = UNITS
            .iter()
            .find(|(unit_ms, _)| ms.is_multiple_of(*unit_ms))
            .copied()
            .unwrap_or((1, "ms"));
        write!(f, "{}{}", ms / unit_ms, suffix)
    }
}

/// A byte count such as `512MiB` or `20GiB` (decimal units like `5GB` are accepted too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }

    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        bytesize::ByteSize::from_str(s.trim())
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|_| {
                format!("invalid size {s:?}: use a number and a unit, like 512MiB or 20GiB")
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 8] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
            (1_000_000_000_000, "TB"),
            (1_000_000_000, "GB"),
            (1_000_000, "MB"),
            (1_000, "kB"),
        ];
        match UNITS
            .iter()
            .find(|(unit, _)| self.0 != 0 && self.0.is_multiple_of(*unit))
        {
            Some((unit, suffix)) => write!(f, "{}{}", self.0 / unit, suffix),
            None => write!(f, "{}B", self.0),
        }
    }
}

/// Serde glue shared by both types: they are strings in TOML and JSON.
macro_rules! string_serde {
    ($ty:ty, $expecting:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(V)
            }
        }
    };
}

string_serde!(Duration, "a duration such as \"90s\", \"15m\" or \"7d\"");
string_serde!(ByteSize, "a size such as \"512MiB\" or \"20GiB\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_in_their_largest_exact_unit() {
        for (input, printed) in [
            ("90s", "90s"),
            ("15m", "15m"),
            ("7d", "7d"),
            ("120s", "2m"),
            ("1500ms", "1500ms"),
            ("36h", "36h"),
        ] {
            let d: Duration = input.parse().unwrap();
            assert_eq!(d.to_string(), printed, "{input}");
            assert_eq!(printed.parse::<Duration>().unwrap(), d);
        }
        assert!("7x".parse::<Duration>().is_err());
        assert!("".parse::<Duration>().is_err());
        assert!("-5s".parse::<Duration>().is_err());
    }

    #[test]
    fn sizes_parse_and_print_in_their_largest_exact_unit() {
        for (input, bytes, printed) in [
            ("512MiB", 512 << 20, "512MiB"),
            ("20GiB", 20 << 30, "20GiB"),
            ("1024KiB", 1 << 20, "1MiB"),
            ("5GB", 5_000_000_000, "5GB"),
            ("100", 100, "100B"),
        ] {
            let s: ByteSize = input.parse().unwrap();
            assert_eq!(s.bytes(), bytes, "{input}");
            assert_eq!(s.to_string(), printed, "{input}");
        }
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("-1MiB".parse::<ByteSize>().is_err());
    }
}
