//! Opaque pagination cursors: base64url of the last item's sort key.

use base64::Engine;
use meridian_core::ValidationErrors;

use crate::StoreError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub fn encode_cursor(key: &str) -> String {
    B64.encode(key.as_bytes())
}

/// Decodes a cursor made by [`encode_cursor`]; a cursor a client made up is a validation
/// error on the `cursor` field.
pub fn decode_cursor(cursor: &str) -> Result<String, StoreError> {
    B64.decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            StoreError::Validation(ValidationErrors::single(
                "cursor",
                "is not a cursor this API returned",
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor("SKU-9")).unwrap(), "SKU-9");
        assert!(decode_cursor("!!!").is_err());
    }
}
