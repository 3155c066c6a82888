//! Code 128 barcodes (ISO/IEC 15417), code set B: printable ASCII.
//!
//! [`encode`] turns a text into the widths of its bars and spaces, alternating and starting
//! with a bar: start B, one symbol per character, the modulo-103 check symbol, stop.

/// The bar and space widths (in modules) of symbols 0 to 105; each adds up to 11 modules.
const PATTERNS: [&[u8; 6]; 106] = [
    b"212222", b"222122", b"222221", b"121223", b"121322", b"131222", b"122213", b"122312",
    b"132212", b"221213", b"221312", b"231212", b"112232", b"122132", b"122231", b"113222",
    b"123122", b"123221", b"223211", b"221132", b"221231", b"213212", b"223112", b"312131",
    b"311222", b"321122", b"321221", b"312212", b"322112", b"322211", b"212123", b"212321",
    b"232121", b"111323", b"131123", b"131321", b"112313", b"132113", b"132311", b"211313",
    b"231113", b"231311", b"112133", b"112331", b"132131", b"113123", b"113321", b"133121",
    b"313121", b"211331", b"231131", b"213113", b"213311", b"213131", b"311123", b"311321",
    b"331121", b"312113", b"312311", b"332111", b"314111", b"221411", b"431111", b"111224",
    b"111422", b"121124", b"121421", b"141122", b"141221", b"112214", b"112412", b"122114",
    b"122411", b"142112", b"142211", b"241211", b"221114", b"413111", b"241112", b"134111",
    b"111242", b"121142", b"121241", b"114212", b"124112", b"124211", b"411212", b"421112",
    b"421211", b"212141", b"214121", b"412121", b"111143", b"111341", b"131141", b"114113",
    b"114311", b"411113", b"411311", b"113141", b"114131", b"311141", b"411131", b"211412",
    b"211214", b"211232",
];

/// The stop symbol: 13 modules, ending with the 2-module termination bar.
const STOP: &[u8; 7] = b"2331112";
const START_B: usize = 104;

/// Why a text cannot be a code set B barcode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Code128Error {
    #[error("a barcode needs at least one character")]
    Empty,
    #[error("{0:?} is not printable ASCII, which code set B cannot encode")]
    Unencodable(char),
}

/// The bar and space widths of `text` in code set B, bar first, quiet zones excluded.
pub fn encode(text: &str) -> Result<Vec<u8>, Code128Error> {
    if text.is_empty() {
        return Err(Code128Error::Empty);
    }
    let mut values = Vec::with_capacity(text.len() + 3);
    values.push(START_B);
    for c in text.chars() {
        if !(' '..='~').contains(&c) {
            return Err(Code128Error::Unencodable(c));
        }
        values.push(c as usize - 32);
    }
    let check = values
        .iter()
        .enumerate()
        .map(|(i, v)| i.max(1) * v)
        .sum::<usize>()
        % 103;
    values.push(check);
    let mut widths: Vec<u8> = values
        .iter()
        .flat_map(|v| PATTERNS[*v].iter().map(|w| w - b'0'))
        .collect();
    widths.extend(STOP.iter().map(|w| w - b'0'));
    Ok(widths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(widths: &[u8]) -> String {
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| if i % 2 == 0 { "1" } else { "0" }.repeat(*w as usize))
            .collect()
    }

    #[test]
    fn every_symbol_is_eleven_modules_and_unique() {
        for (i, p) in PATTERNS.iter().enumerate() {
            assert_eq!(p.iter().map(|w| w - b'0').sum::<u8>(), 11, "symbol {i}");
            assert_eq!(PATTERNS.iter().filter(|q| q == &p).count(), 1, "symbol {i}");
        }
        assert_eq!(STOP.iter().map(|w| w - b'0').sum::<u8>(), 13);
    }

    #[test]
    fn known_symbols_have_their_published_bit_patterns() {
        // Values 0, 32, 98 and the start symbols as published in ISO/IEC 15417's table.
        assert_eq!(bits(&encode_symbol(0)), "11011001100");
        assert_eq!(bits(&encode_symbol(32)), "11000110110");
        assert_eq!(bits(&encode_symbol(98)), "11110100010");
        assert_eq!(bits(&encode_symbol(104)), "11010010000");
        assert_eq!(bits(&encode_symbol(105)), "11010011100");
    }

    fn encode_symbol(v: usize) -> Vec<u8> {
        PATTERNS[v].iter().map(|w| w - b'0').collect()
    }

    /// Reads a barcode back: the symbols between start and stop, checked against the check
    /// symbol.
    fn decode(widths: &[u8]) -> String {
        let symbols: Vec<usize> = widths[..widths.len() - 7]
            .chunks(6)
            .map(|c| {
                PATTERNS
                    .iter()
                    .position(|p| p.iter().map(|w| w - b'0').eq(c.iter().copied()))
                    .expect("a known symbol")
            })
            .collect();
        assert_eq!(symbols[0], START_B);
        let (check, data) = symbols[1..].split_last().unwrap();
        let sum: usize = START_B
            + data
                .iter()
                .enumerate()
                .map(|(i, v)| (i + 1) * v)
                .sum::<usize>();
        assert_eq!(sum % 103, *check);
        data.iter().map(|v| char::from(*v as u8 + 32)).collect()
    }

    #[test]
    fn tracking_numbers_round_trip() {
        for text in ["MRD0123456789ABCDEF", "a b~", "0"] {
            let w = encode(text).unwrap();
            assert_eq!(
                w.iter().map(|x| *x as usize).sum::<usize>(),
                11 * (text.len() + 2) + 13
            );
            assert_eq!(decode(&w), text);
        }
        // "PJJ123C": the check symbol is (104 + 48 + 2*42 + 3*42 + 4*17 + 5*18 + 6*19 + 7*35)
        // mod 103 = 55.
        let w = encode("PJJ123C").unwrap();
        let check = &w[w.len() - 13..w.len() - 7];
        assert_eq!(check, &encode_symbol(55)[..]);
    }

    #[test]
    fn refuses_what_code_set_b_cannot_hold() {
        assert_eq!(encode(""), Err(Code128Error::Empty));
        assert_eq!(encode("é"), Err(Code128Error::Unencodable('é')));
        assert_eq!(encode("a\n"), Err(Code128Error::Unencodable('\n')));
    }
}
