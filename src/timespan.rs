//! systemd.time(7) time spans, parsed the way systemd 252's own parser reads them (checked
//! input by input against `systemd-analyze timespan`, see the tests).

use std::time::Duration;

/// Units and their length in microseconds. Unit names are case-sensitive (`M` is a month,
/// `m` a minute).
const UNITS: &[(&str, u64)] = &[
    ("usec", 1),
    ("us", 1),
    ("µs", 1),
    ("μs", 1),
    ("msec", 1_000),
    ("ms", 1_000),
    ("seconds", 1_000_000),
    ("second", 1_000_000),
    ("sec", 1_000_000),
    ("s", 1_000_000),
    ("minutes", 60_000_000),
    ("minute", 60_000_000),
    ("min", 60_000_000),
    ("m", 60_000_000),
    ("hours", 3_600_000_000),
    ("hour", 3_600_000_000),
    ("hr", 3_600_000_000),
    ("h", 3_600_000_000),
    ("days", 86_400_000_000),
    ("day", 86_400_000_000),
    ("d", 86_400_000_000),
    ("weeks", 604_800_000_000),
    ("week", 604_800_000_000),
    ("w", 604_800_000_000),
    ("months", 2_629_800_000_000),
    ("month", 2_629_800_000_000),
    ("M", 2_629_800_000_000),
    ("years", 31_557_600_000_000),
    ("year", 31_557_600_000_000),
    ("y", 31_557_600_000_000),
];

/// What counts as white space between parts (systemd's set; not \v or \f).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Parses a time span: parts of a number and an optional unit (seconds when absent),
/// summed; `infinity` alone. Returns `None` for infinity.
pub fn parse(s: &str) -> Result<Option<Duration>, String> {
    let t = s.trim_matches(is_space);
    if t == "infinity" {
        return Ok(None);
    }
    if t.is_empty() {
        return Err("empty time span".into());
    }
    let mut rest = t;
    let mut total: u64 = 0;
    let mut seen_part = false;
    loop {
        rest = rest.trim_start_matches(is_space);
        if rest.is_empty() {
            if !seen_part {
                return Err("no number in the time span".into());
            }
            break;
        }
        seen_part = true;
        // The whole part is read as strtoll(3) reads it: C white space, a sign, digits; if
        // there are no digits nothing is consumed, and only a fraction may follow.
        let int_digits = {
            let t = rest.trim_start_matches(|c: char| is_space(c) || c == '\u{b}' || c == '\u{c}');
            let (negative, t) = match t.strip_prefix('+') {
                Some(t) => (false, t),
                None => match t.strip_prefix('-') {
                    Some(t) => (true, t),
                    None => (false, t),
                },
            };
            let len = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            if len == 0 {
                ""
            } else if negative {
                return Err("a negative time span".into());
            } else {
                let (digits, r) = t.split_at(len);
                rest = r;
                digits
            }
        };
        let mut frac_digits = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            if frac_len == 0 {
                return Err("a '.' with no digits after it".into());
            }
            (frac_digits, rest) = r.split_at(frac_len);
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(match rest.chars().next() {
                Some(c) => format!("'{c}' where a number was expected"),
                None => "a number was expected".into(),
            });
        }
        let whole: u64 = if int_digits.is_empty() {
            0
        } else {
            match int_digits.parse::<i64>() {
                Ok(v) => v as u64,
                Err(_) => return Err("numerical result out of range".into()),
            }
        };
        let after_number = rest;
        rest = rest.trim_start_matches(is_space);
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let (unit, r) = rest.split_at(unit_len);
        rest = r;
        let multiplier = if unit.is_empty() {
            // A number without a unit must end the span or be followed by white space.
            if after_number.starts_with(|c: char| !is_space(c)) {
                return Err(format!("unexpected '{after_number}' after a number"));
            }
            1_000_000
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, m)| *m)
                .ok_or_else(|| format!("unknown time unit '{unit}'"))?
        };
        if whole >= u64::MAX / multiplier {
            return Err("numerical result out of range".into());
        }
        let mut part = whole * multiplier;
        let mut scale = multiplier;
        for d in frac_digits.bytes() {
            scale /= 10;
            part += u64::from(d - b'0') * scale;
        }
        total = match total.checked_add(part) {
            Some(t) if t < u64::MAX => t,
            _ => return Err("numerical result out of range".into()),
        };
    }
    Ok(Some(Duration::from_micros(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs and what `systemd-analyze timespan` (systemd 252) answers: microseconds, or
    /// None where it refuses the input.
    pub const TABLE: &[(&str, Option<u64>)] = &[
        ("0", Some(0)),
        ("30s", Some(30_000_000)),
        ("5min", Some(300_000_000)),
        ("1h 30min", Some(5_400_000_000)),
        ("500ms", Some(500_000)),
        ("7", Some(7_000_000)),
        ("1.5s", Some(1_500_000)),
        ("2 hours", Some(7_200_000_000)),
        ("1d", Some(86_400_000_000)),
        ("1w", Some(604_800_000_000)),
        ("1M", Some(2_629_800_000_000)),
        ("1m", Some(60_000_000)),
        ("1y", Some(31_557_600_000_000)),
        ("250us", Some(250)),
        ("5µs", Some(5)),
        ("5μs", Some(5)),
        ("55s500ms", Some(55_500_000)),
        ("1min 1s 1ms 1us", Some(61_001_001)),
        ("5 5", Some(10_000_000)),
        ("1s5", Some(6_000_000)),
        ("5 s", Some(5_000_000)),
        (".5s", Some(500_000)),
        ("5 .5s", Some(5_500_000)),
        ("+5s", Some(5_000_000)),
        ("5 +5s", Some(10_000_000)),
        ("5min5", Some(305_000_000)),
        ("5 min 3", Some(303_000_000)),
        ("5sec", Some(5_000_000)),
        ("0.0000001s", Some(0)),
        ("1.9999999s", Some(1_999_999)),
        ("0.5y", Some(15_778_800_000_000)),
        (" 5 ", Some(5_000_000)),
        ("584541y", Some(18_446_711_061_600_000_000)),
        ("1y 584541y", Some(18_446_742_619_200_000_000)),
        ("9223372036854775807us", Some(9_223_372_036_854_775_807)),
        ("18446744073709551us", Some(18_446_744_073_709_551)),
        ("infinity", Some(u64::MAX)),
        (" infinity ", Some(u64::MAX)),
        ("", None),
        ("  ", None),
        ("5x", None),
        ("-1s", None),
        ("1e3", None),
        ("s5", None),
        ("second", None),
        ("s 5", None),
        ("min5", None),
        ("5s min", None),
        ("5ss", None),
        ("5S", None),
        ("1MIN", None),
        ("5.", None),
        ("5.s", None),
        ("1..2s", None),
        ("1.5.2s", None),
        ("5 s s", None),
        ("5s+", None),
        ("1000ns", None),
        ("infinity s", None),
        ("infinity5", None),
        ("0\u{b}", None),
        ("584542y", None),
        ("18446744073709s", None),
        ("9223372036854775808us", None),
        ("18446744073709551614us", None),
        ("5s.5s", Some(5_500_000)),
        ("1.5 .2s", Some(1_700_000)),
        ("\u{b}5", Some(5_000_000)),
        ("5 \u{b}5", Some(10_000_000)),
        ("\u{c}5", Some(5_000_000)),
        ("\u{b}+5", Some(5_000_000)),
        ("5s+5", Some(10_000_000)),
        ("0.1usec", Some(0)),
        ("1.5us", Some(1)),
        ("5\u{b}", None),
        ("+\u{b}5", None),
        ("5+5", None),
        ("5 +.5", None),
        ("\u{b}", None),
        ("0 \u{b}", None),
        ("\u{b}.0", None),
    ];

    /// Every input in the table gives what systemd 252 gives.
    #[test]
    fn table() {
        for (input, want) in TABLE {
            let got = parse(input).map(|d| d.map_or(u64::MAX, |d| d.as_micros() as u64));
            assert_eq!(got.ok(), *want, "{input:?}: {:?}", parse(input));
        }
    }

    /// Asks the installed `systemd-analyze timespan` about every input in the table, so the
    /// table is checked against systemd itself wherever it is installed.
    #[test]
    fn table_is_what_systemd_says() {
        if std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "systemd-analyze not installed: table checked against its stored values only"
            );
            return;
        }
        for (input, want) in TABLE {
            let out = std::process::Command::new("systemd-analyze")
                .args(["timespan", input])
                .output()
                .expect("systemd-analyze runs");
            let text = String::from_utf8_lossy(&out.stdout);
            let said = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("μs: "))
                .map(|v| v.trim().parse::<u64>().expect("μs value"));
            let said = if out.status.success() { said } else { None };
            assert_eq!(said, *want, "{input:?}: systemd-analyze said {text}");
        }
    }
}
