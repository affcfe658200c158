use super::*;
use crate::crypto::sm2::IdentityKey;
use crate::protocol::PublicJwk;
use crate::service::keyset::KeySet;

fn document(keys: &KeySet) -> KeysDocument {
    let mut jwks = vec![PublicJwk::new(keys.identity().public(), "sig")];
    jwks.extend(keys.published().iter().map(PublicJwk::encryption));
    KeysDocument { keys: jwks }
}

#[test]
fn the_newest_certified_key_valid_now_is_chosen() {
    let keys = KeySet::new(KeySet::bootstrap(3600, 300, 1_000).unwrap(), 1_000).unwrap();
    let first = keys.newest();
    keys.maintain(4_600).unwrap();
    let second = keys.newest();
    let doc = document(&keys);
    let during_grace = ServerKeys::from_document(&doc, None, 4_700).unwrap();
    assert_eq!(during_grace.encryption, second);
    assert_eq!(during_grace.encryption_not_after, 8_200);
    // Before the second key's validity only the first is acceptable.
    assert_eq!(
        ServerKeys::from_document(&doc, None, 4_000)
            .unwrap()
            .encryption,
        first
    );
    let expired = ServerKeys::from_document(&doc, None, 9_000).unwrap_err();
    assert!(expired.to_string().contains("not valid now"), "{expired}");
}

#[test]
fn keys_not_certified_by_the_identity_are_refused() {
    let keys = KeySet::new(KeySet::bootstrap(3600, 300, 1_000).unwrap(), 1_000).unwrap();
    let mut doc = document(&keys);
    // Swap in another identity: the encryption key's certificate no longer verifies.
    let other = IdentityKey::generate().unwrap();
    doc.keys[0] = PublicJwk::new(other.public(), "sig");
    let err = ServerKeys::from_document(&doc, None, 1_000).unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // A certificate stripped off is refused too.
    let mut bare = document(&keys);
    bare.keys[1].cert = None;
    assert!(ServerKeys::from_document(&bare, None, 1_000).is_err());
    // And a pinned identity must be the one presented.
    let pinned = ServerKeys::from_document(&document(&keys), Some(other.public()), 1_000);
    assert!(pinned.unwrap_err().to_string().contains("pinned"));
}
