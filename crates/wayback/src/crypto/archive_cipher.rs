//! What one instance's archive is encrypted with: two keys derived from its [`DataKey`].
//!
//! HKDF-SHA256 (salt `wayback archive v1`) derives an AES-256-GCM key (info `aead`) and an
//! HMAC-SHA256 key (info `hash`) from the data key, so that the one secret never serves two
//! algorithms. [`ArchiveCipher::seal`] frames an object's payload as `nonce (12) | ciphertext |
//! tag (16)` with a fresh random 96-bit nonce per object — an instance writes far fewer than
//! the 2^32 objects under which random GCM nonces stay safe — and binds associated data the
//! caller chooses (the object's name and readable header), so that a payload moved to another
//! name, or a header altered, does not open. [`ArchiveCipher::keyed_hash`] replaces the plain
//! SHA-256 of content wherever the archive shows a digest: a plain hash would let anyone who
//! reads the bucket confirm a guess of the content.
//!
//! `Debug` prints nothing of the keys. Must not import anything of the crate.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::DataKey;

const SALT: &[u8] = b"wayback archive v1";

/// Bytes a sealed payload adds to its plaintext (nonce and tag).
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

/// A sealed payload does not open: a wrong data key, or the payload, its name or its
/// associated data were altered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the encrypted payload does not open (wrong data key, or it was altered or moved)")]
pub struct Unauthentic;

/// The encryption keys of one instance's archive.
pub struct ArchiveCipher {
    aead: LessSafeKey,
    hash: hmac::Key,
    rng: SystemRandom,
}

impl fmt::Debug for ArchiveCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ArchiveCipher(<redacted>)")
    }
}

/// One derived 32-byte key.
struct Len32;

impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn derive(data_key: &DataKey, info: &[u8]) -> [u8; 32] {
    let prk = Salt::new(HKDF_SHA256, SALT).extract(data_key.expose());
    let info = [info];
    let okm = prk
        .expand(&info, Len32)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let mut out = [0u8; 32];
    okm.fill(&mut out).expect("the length matches");
    out
}

impl ArchiveCipher {
    pub fn new(data_key: &DataKey) -> ArchiveCipher {
        let mut aead = derive(data_key, b"aead");
        let mut hash = derive(data_key, b"hash");
        let cipher = ArchiveCipher {
            aead: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &aead).expect("32 bytes is an AES-256 key"),
            ),
            hash: hmac::Key::new(hmac::HMAC_SHA256, &hash),
            rng: SystemRandom::new(),
        };
        aead.fill(0);
        hash.fill(0);
        cipher
    }

    /// Encrypts `plaintext`, binding `aad`: `nonce | ciphertext | tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the OS random generator works");
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-GCM seals any input of this size");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Decrypts what [`ArchiveCipher::seal`] made with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, Unauthentic> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Unauthentic);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unauthentic)?;
        let mut buf = rest.to_vec();
        let len = self
            .aead
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| Unauthentic)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// HMAC-SHA256 of `content` under the derived hash key.
    pub fn keyed_hash(&self, content: &[u8]) -> [u8; 32] {
        hmac::sign(&self.hash, content)
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_with_the_same_key_and_associated_data_only() {
        let key = DataKey::generate();
        let c = ArchiveCipher::new(&key);
        let sealed = c.seal(b"a row of the tenant", b"wal/0001");
        assert_eq!(sealed.len(), 19 + SEAL_OVERHEAD);
        assert!(!sealed.windows(5).any(|w| w == b"a row"));
        assert_eq!(
            c.open(&sealed, b"wal/0001").unwrap(),
            b"a row of the tenant"
        );
        assert_eq!(c.open(&sealed, b"wal/0002"), Err(Unauthentic), "moved");
        let other = ArchiveCipher::new(&DataKey::generate());
        assert_eq!(other.open(&sealed, b"wal/0001"), Err(Unauthentic), "key");
        let mut altered = sealed.clone();
        altered[20] ^= 1;
        assert_eq!(c.open(&altered, b"wal/0001"), Err(Unauthentic), "altered");
        assert_eq!(c.open(&sealed[..10], b"wal/0001"), Err(Unauthentic));
        assert_ne!(sealed, c.seal(b"a row of the tenant", b"wal/0001"), "nonce");
    }

    #[test]
    fn the_keyed_hash_is_stable_per_key_and_not_the_plain_hash() {
        let key = DataKey::generate();
        let (a, b) = (ArchiveCipher::new(&key), ArchiveCipher::new(&key));
        assert_eq!(a.keyed_hash(b"x"), b.keyed_hash(b"x"));
        assert_ne!(a.keyed_hash(b"x"), a.keyed_hash(b"y"));
        let other = ArchiveCipher::new(&DataKey::generate());
        assert_ne!(a.keyed_hash(b"x"), other.keyed_hash(b"x"));
        assert!(!format!("{a:?}").contains('['));
    }
}
