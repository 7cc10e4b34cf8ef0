//! The id a new event gets when its caller chose one. A caller chooses an id so that sending
//! the request again is safe; if the chosen id were stored as it is, a create naming another
//! user's event would be refused (ALREADY_EXISTS) while a free id is taken, which tells anyone
//! who holds an id whether that event exists, though reads of it say NOT_FOUND. So the stored
//! id is the chosen one scoped to its owner: the chosen id's first 48 bits (a UUIDv7's
//! creation time, so ids keep their order), the rest a hash of the owner and the chosen id.
//! The same owner sending the same id finds the same event; two owners never meet, and a
//! chosen id that is someone else's event is no different from a free one.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The id stored for an event `owner` creates with the id `chosen`: a UUIDv7 with `chosen`'s
/// time, its other 74 bits from SHA-256 of both.
pub(crate) fn owned(owner: &str, chosen: Uuid) -> Uuid {
    let mut hash = Sha256::new();
    // Length-prefixed, so that no owner and id run into another pair's bytes.
    hash.update((owner.len() as u64).to_be_bytes());
    hash.update(owner.as_bytes());
    hash.update(chosen.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&chosen.as_bytes()[..6]);
    bytes[6..].copy_from_slice(&digest[..10]);
    // Version 7, RFC 9562 variant.
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_finds_the_same_id_and_two_owners_never_meet() {
        let chosen = Uuid::now_v7();
        let alice = owned("alice", chosen);
        assert_eq!(
            owned("alice", chosen),
            alice,
            "a repeat finds the same event"
        );
        assert_ne!(owned("bob", chosen), alice);
        assert_ne!(alice, chosen, "not the chosen id itself");
        // Nor can a caller choose the id another owner's event was stored under.
        assert_ne!(owned("bob", alice), alice);
        assert_ne!(owned("alice", Uuid::now_v7()), alice);
        // Length-prefixed: "ab" + "c…" is not "a" + "bc…".
        assert_ne!(owned("ab", chosen), owned("a", chosen));
    }

    #[test]
    fn the_stored_id_is_a_uuid_v7_of_the_chosen_ids_time() {
        let chosen = Uuid::now_v7();
        let stored = owned("alice", chosen);
        assert_eq!(stored.get_version_num(), 7);
        assert_eq!(stored.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(stored.get_timestamp(), chosen.get_timestamp());
    }
}
