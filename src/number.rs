//! Whole numbers read the way systemd reads them in `-c` and the LISTEN_* variables.
//!
//! systemd-socket-proxyd and sd_listen_fds(3) read these with `safe_atou()`/`safe_atoi()`,
//! which call strtoul(3)/strtol(3) with base 0. So `0x10` is 16 and `010` is 8 (octal), while
//! `08` and `5 ` (trailing space) are refused. rsproxyd reads them the same way, so a unit
//! that works with the original gives the same setting here.

/// A number as strtoul(3) with base 0 reads it, then checked as systemd's `safe_ato*()`
/// checks it: leading white space and one `+` or `-` are allowed, then `0x`/`0X` and hex
/// digits, `0` and octal digits, or decimal digits; nothing may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CNumber {
    /// Zero or more (`-0` is zero).
    NonNegative(u64),
    /// Less than zero; the magnitude.
    Negative(u64),
}

/// Reads `s` as described on [`CNumber`]; `None` when it is not such a number or does not
/// fit in 64 bits.
pub fn parse_c_number(s: &str) -> Option<CNumber> {
    // strtoul skips isspace(3) characters: space, \t, \n, \v, \f, \r.
    let s = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let bytes = s.as_bytes();
    let (radix, digits) = match bytes {
        // "0x" counts as a prefix only when a hex digit follows; otherwise strtoul reads the
        // "0" and stops at the "x", which is then trailing text.
        [b'0', b'x' | b'X', d, ..] if d.is_ascii_hexdigit() => (16, &s[2..]),
        [b'0', ..] => (8, s),
        _ => (10, s),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let value = u64::from_str_radix(digits, radix).ok()?;
    Some(match (negative, value) {
        (true, v) if v != 0 => CNumber::Negative(v),
        (_, v) => CNumber::NonNegative(v),
    })
}

/// Reads `s` as systemd's `safe_atou()` does: a [`CNumber`] that is not negative and is at
/// most `max`.
pub fn parse_c_unsigned(s: &str, max: u64) -> Option<u64> {
    match parse_c_number(s)? {
        CNumber::NonNegative(v) if v <= max => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values are what strtoul(3) with base 0 plus systemd's checks give
    /// (`/lib/systemd/systemd-socket-proxyd -c VALUE` accepts or refuses the same).
    #[test]
    fn reads_like_strtoul_base_0() {
        use CNumber::*;
        let table: &[(&str, Option<CNumber>)] = &[
            ("0", Some(NonNegative(0))),
            ("10", Some(NonNegative(10))),
            ("010", Some(NonNegative(8))),
            ("0x10", Some(NonNegative(16))),
            ("0X1f", Some(NonNegative(31))),
            ("00", Some(NonNegative(0))),
            ("+5", Some(NonNegative(5))),
            (" 5", Some(NonNegative(5))),
            ("\t\n\x0b\x0c\r 7", Some(NonNegative(7))),
            ("-0", Some(NonNegative(0))),
            ("-5", Some(Negative(5))),
            ("-0x2", Some(Negative(2))),
            ("18446744073709551615", Some(NonNegative(u64::MAX))),
            ("18446744073709551616", None),
            ("08", None),
            ("09", None),
            ("0x", None),
            ("0xg", None),
            ("0x-1", None),
            ("5 ", None),
            ("5\n", None),
            ("", None),
            (" ", None),
            ("+", None),
            ("-", None),
            ("+-5", None),
            ("--5", None),
            ("1.5", None),
            ("1e3", None),
            ("five", None),
            ("٣", None),
            ("5\u{a0}", None),
            ("\u{a0}5", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_c_number(input), *want, "{input:?}");
        }
    }

    #[test]
    fn unsigned_bounds() {
        assert_eq!(
            parse_c_unsigned("4294967295", u32::MAX.into()),
            Some(4294967295)
        );
        assert_eq!(parse_c_unsigned("4294967296", u32::MAX.into()), None);
        assert_eq!(parse_c_unsigned("-1", u64::MAX), None);
        assert_eq!(parse_c_unsigned("-0", 10), Some(0));
        assert_eq!(parse_c_unsigned("0x10", 16), Some(16));
        assert_eq!(parse_c_unsigned("0x11", 16), None);
    }
}
