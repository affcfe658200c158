//! Embeddings inside stored records, packed as base64url (no padding) of little-endian f32.
//!
//! A 128-d embedding is 683 characters packed against about 1,400 as a JSON array of
//! decimals, and packing is exact and several times faster than printing and parsing
//! floats; every stored byte is also SM4-GCM work. Use with `#[serde(with = "packed")]`.
//! Reading also accepts the plain JSON array that earlier versions stored, so existing
//! databases open unchanged. Intermediate buffers holding feature values are wiped.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};
use zeroize::Zeroizing;

pub fn serialize<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
    let bytes = Zeroizing::new(
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    let text = Zeroizing::new(URL_SAFE_NO_PAD.encode(&*bytes));
    serializer.serialize_str(&text)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
    deserializer.deserialize_any(PackedVisitor)
}

struct PackedVisitor;

impl<'de> Visitor<'de> for PackedVisitor {
    type Value = Vec<f32>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("base64url of little-endian f32, or an array of numbers")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<f32>, E> {
        let bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| E::custom("bad base64url"))?,
        );
        if bytes.len() % 4 != 0 {
            return Err(E::custom("packed features are not a whole number of f32"));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(value) = seq.next_element()? {
            values.push(value);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(with = "super")]
        features: Vec<f32>,
    }

    #[test]
    fn round_trip_is_exact_and_compact() {
        let holder = Holder {
            features: vec![0.1, -0.25, 1e-30, f32::MAX, 0.0],
        };
        let json = serde_json::to_string(&holder).unwrap();
        assert_eq!(json.len(), r#"{"features":""}"#.len() + 27);
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), holder);
    }

    #[test]
    fn earlier_array_records_still_read() {
        let holder: Holder = serde_json::from_str(r#"{"features":[0.6,0.8]}"#).unwrap();
        assert_eq!(holder.features, vec![0.6, 0.8]);
    }

    #[test]
    fn damaged_packing_is_refused() {
        assert!(serde_json::from_str::<Holder>(r#"{"features":"!!"}"#).is_err());
        // 3 bytes: not a whole f32.
        assert!(serde_json::from_str::<Holder>(r#"{"features":"AAAA"}"#).is_err());
        assert!(serde_json::from_str::<Holder>(r#"{"features":7}"#).is_err());
    }
}
