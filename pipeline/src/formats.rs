//! Named value formats a model column may require (`format = "email"`, …):
//! checks for the kinds of text that bulk feeds carry most often.

/// A named format rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Email,
    /// ISO 3166-1 alpha-2 country code, upper case.
    CountryCode,
    /// ISO 4217 currency code, upper case.
    CurrencyCode,
    /// 64 hexadecimal digits.
    Sha256Hex,
    /// `type/subtype`, as in a `Content-Type` header (without parameters).
    MimeType,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &[
        "email",
        "country_code",
        "currency_code",
        "sha256_hex",
        "mime_type",
    ];

    pub fn parse(name: &str) -> Result<Format, String> {
        Ok(match name {
            "email" => Format::Email,
            "country_code" | "iso3166_alpha2" => Format::CountryCode,
            "currency_code" | "iso4217" => Format::CurrencyCode,
            "sha256_hex" | "sha256" => Format::Sha256Hex,
            "mime_type" => Format::MimeType,
            other => {
                return Err(format!(
                    "unknown format `{other}` (known: {})",
                    Format::NAMES.join(", ")
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Email => "email",
            Format::CountryCode => "country_code",
            Format::CurrencyCode => "currency_code",
            Format::Sha256Hex => "sha256_hex",
            Format::MimeType => "mime_type",
        }
    }

    /// Checks `value`; on failure, says what was expected.
    pub fn check(self, value: &str) -> Result<(), &'static str> {
        let ok = match self {
            Format::Email => is_email(value),
            Format::CountryCode => {
                letter_code(value, 2).is_some_and(|i| COUNTRY_SET[i / 64] >> (i % 64) & 1 == 1)
            }
            Format::CurrencyCode => {
                letter_code(value, 3).is_some_and(|i| CURRENCY_SET[i / 64] >> (i % 64) & 1 == 1)
            }
            Format::Sha256Hex => value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()),
            Format::MimeType => is_mime_type(value),
        };
        if ok {
            Ok(())
        } else {
            Err(match self {
                Format::Email => "is not a valid email address",
                Format::CountryCode => {
                    "is not an ISO 3166-1 alpha-2 country code (upper case, e.g. DE)"
                }
                Format::CurrencyCode => "is not an ISO 4217 currency code (upper case, e.g. EUR)",
                Format::Sha256Hex => "is not a SHA-256 digest (64 hex digits)",
                Format::MimeType => "is not a MIME type (type/subtype)",
            })
        }
    }
}

/// A pragmatic address check: what mail systems accept in practice, not the
/// whole of RFC 5322 (no quoted local parts, no IP-literal domains). One
/// pass over the bytes: this runs for every row of most feeds.
fn is_email(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() > 254 {
        return false;
    }
    let Some(at) = memchr::memrchr(b'@', b) else {
        return false;
    };
    let (local, domain) = (&b[..at], &b[at + 1..]);
    if local.is_empty() || local.len() > 64 || domain.len() < 3 {
        return false;
    }
    // Letters, digits, the specials and any non-ASCII byte; a dot not
    // first, not last and not after another. No branch per byte: this
    // runs for every row of most feeds.
    let (mut bad, mut after_dot) = (false, true);
    for &c in local {
        let dot = c == b'.';
        bad |= !LOCAL_PART[c as usize] | (dot & after_dot);
        after_dot = dot;
    }
    if bad || after_dot {
        return false;
    }
    // Labels of 1 to 63 letters, digits, hyphens (not first or last) or
    // non-ASCII bytes; at least two, the last of two or more characters
    // and not all digits.
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in domain.split(|&c| c == b'.') {
        if label.is_empty()
            || label.len() > 63
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
            || !label.iter().all(|&c| DOMAIN_LABEL[c as usize])
        {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && !last.iter().all(u8::is_ascii_digit)
}

/// The bytes a domain's label may hold (a hyphen's place is checked apart).
const DOMAIN_LABEL: [bool; 256] = address_bytes(b"-");

/// The bytes an address's local part may hold (a dot's place is checked
/// apart).
const LOCAL_PART: [bool; 256] = address_bytes(b".!#$%&'*+/=?^_`{|}~-");

/// A table of the bytes an address part may hold: letters, digits, any
/// non-ASCII byte and `extra`.
const fn address_bytes(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || b >= 0x80;
        c += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

fn is_mime_type(v: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match v.split_once('/') {
        Some((t, s)) => token(t) && token(s),
        None => false,
    }
}

/// The index of an upper-case code of `n` letters in base 26.
fn letter_code(v: &str, n: usize) -> Option<usize> {
    let b = v.as_bytes();
    if b.len() != n || !b.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    Some(b.iter().fold(0, |a, c| a * 26 + (c - b'A') as usize))
}

/// A bit set over [`letter_code`] indices, built at compile time.
const fn code_set<const WORDS: usize>(codes: &[&str]) -> [u64; WORDS] {
    let mut set = [0u64; WORDS];
    let mut i = 0;
    while i < codes.len() {
        let b = codes[i].as_bytes();
        let mut idx = 0;
        let mut j = 0;
        while j < b.len() {
            idx = idx * 26 + (b[j] - b'A') as usize;
            j += 1;
        }
        set[idx / 64] |= 1 << (idx % 64);
        i += 1;
    }
    set
}

static COUNTRY_SET: [u64; 11] = code_set(COUNTRIES);
static CURRENCY_SET: [u64; 275] = code_set(CURRENCIES);

/// ISO 3166-1 alpha-2, sorted.
const COUNTRIES: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// ISO 4217 active codes, sorted.
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted() {
        assert!(COUNTRIES.windows(2).all(|w| w[0] < w[1]));
        assert!(CURRENCIES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn emails() {
        for ok in [
            "a@b.co",
            "first.last+tag@mail.example.org",
            "x_y@sub-domain.io",
        ] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@b.co",
            "a@b",
            "a@b.c",
            "a..b@c.de",
            "a b@c.de",
            "a@-b.de",
            "a@b.123",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    /// The local part's rule written out byte by byte, as it was before
    /// the table: the table must agree with it.
    fn local_part_by_rule(local: &[u8]) -> bool {
        let mut prev = b'.';
        for &c in local {
            let ok = c.is_ascii_alphanumeric()
                || c >= 0x80
                || b"!#$%&'*+/=?^_`{|}~-".contains(&c)
                || (c == b'.' && prev != b'.');
            if !ok {
                return false;
            }
            prev = c;
        }
        prev != b'.'
    }

    /// The whole address check written out byte by byte, as it was before
    /// it went by whole slices: the check must agree with it.
    fn is_email_by_rule(v: &str) -> bool {
        let b = v.as_bytes();
        if b.len() > 254 {
            return false;
        }
        let Some(at) = b.iter().rposition(|&c| c == b'@') else {
            return false;
        };
        let (local, domain) = (&b[..at], &b[at + 1..]);
        if local.is_empty() || local.len() > 64 || domain.len() < 3 {
            return false;
        }
        if !local_part_by_rule(local) {
            return false;
        }
        let (mut labels, mut label_len, mut label_start) = (0, 0usize, 0usize);
        let mut tld_all_digits = true;
        for (i, &c) in domain.iter().enumerate() {
            if c == b'.' {
                if label_len == 0 || domain[i - 1] == b'-' {
                    return false;
                }
                labels += 1;
                label_len = 0;
                label_start = i + 1;
                tld_all_digits = true;
                continue;
            }
            if !(c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80)
                || (c == b'-' && i == label_start)
            {
                return false;
            }
            label_len += 1;
            tld_all_digits &= c.is_ascii_digit();
            if label_len > 63 {
                return false;
            }
        }
        label_len >= 2 && labels >= 1 && !tld_all_digits && domain[domain.len() - 1] != b'-'
    }

    proptest::proptest! {
        #[test]
        fn addresses_are_checked_as_by_the_rule(
            address in proptest::collection::vec(proptest::prop_oneof![
                4 => proptest::sample::select(b"aZ09.-@".to_vec()),
                1 => proptest::sample::select(b"!_+ \x00\x7f\xc3\xa9".to_vec()),
            ], 0..80)
        ) {
            if let Ok(text) = std::str::from_utf8(&address) {
                proptest::prop_assert_eq!(is_email(text), is_email_by_rule(text), "{:?}", text);
            }
        }

        #[test]
        fn the_local_part_table_follows_the_rule(
            local in proptest::collection::vec(proptest::prop_oneof![
                proptest::sample::select(b".!#$%&'*+/=?^_`{|}~-@ \"(),:;<>[]\x00\x7f\x80\xff".to_vec()),
                proptest::num::u8::ANY,
                proptest::sample::select(b"aZ09".to_vec()),
            ], 1..12)
        ) {
            let mut address = local.clone();
            address.extend_from_slice(b"@example.org");
            // Only valid UTF-8 reaches the check; keep the bytes that are.
            if let Ok(text) = std::str::from_utf8(&address) {
                let at = text.rfind('@').unwrap_or(0);
                let by_rule = !text[..at].is_empty()
                    && at <= 64
                    && local_part_by_rule(&text.as_bytes()[..at]);
                proptest::prop_assert_eq!(is_email(text), by_rule, "{:?}", text);
            }
        }
    }

    #[test]
    fn codes() {
        assert!(Format::CountryCode.check("DE").is_ok());
        assert!(Format::CountryCode.check("de").is_err());
        assert!(Format::CountryCode.check("XX").is_err());
        assert!(Format::CurrencyCode.check("EUR").is_ok());
        assert!(Format::CurrencyCode.check("EURO").is_err());
        assert!(Format::MimeType.check("application/json").is_ok());
        assert!(Format::MimeType.check("json").is_err());
    }
}
