//! Frame tickets: `f1.{task_id}.{captured_ms}.{exp_unix}.{mac}` binds one frame to the lease that
//! fetched it, so ingest derives camera, task type and frame id itself (invariant X2).
//!
//! `mac` is base64url (no padding) of HMAC-SHA256 over the credential id, camera id, task id,
//! captured_ms and exp, with a key drawn at random when the daemon starts: tickets die with a
//! restart, leases (in the database) do not. The credential and camera are in the MAC but not in
//! the ticket, so a leaked ticket is useless to another credential or camera.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// How long a ticket is valid after the frame was served.
pub const LIFETIME_S: i64 = 120;

/// The fields a ticket states in clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketClaims {
    pub task_id: String,
    pub captured_ms: i64,
    pub exp_unix: i64,
    mac: Vec<u8>,
}

/// The per-boot ticket key.
pub struct TicketKey([u8; 32]);

impl TicketKey {
    pub fn random() -> TicketKey {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        TicketKey(key)
    }

    fn mac(
        &self,
        credential: &str,
        camera_id: &str,
        task_id: &str,
        captured_ms: i64,
        exp_unix: i64,
    ) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(
            format!("f1\n{credential}\n{camera_id}\n{task_id}\n{captured_ms}\n{exp_unix}")
                .as_bytes(),
        );
        mac
    }

    /// Mints a ticket; `None` for ids that cannot travel in one (a `.` or a line break).
    pub fn mint(
        &self,
        credential: &str,
        camera_id: &str,
        task_id: &str,
        captured_ms: i64,
        now_unix: i64,
    ) -> Option<String> {
        if task_id.contains(['.', '\n', '\r']) {
            return None;
        }
        let exp = now_unix + LIFETIME_S;
        let tag = self
            .mac(credential, camera_id, task_id, captured_ms, exp)
            .finalize()
            .into_bytes();
        Some(format!(
            "f1.{task_id}.{captured_ms}.{exp}.{}",
            URL_SAFE_NO_PAD.encode(tag)
        ))
    }

    /// Checks the MAC (in constant time) and the expiry for a credential and the camera of the
    /// task the claims name.
    pub fn verify(
        &self,
        claims: &TicketClaims,
        credential: &str,
        camera_id: &str,
        now_unix: i64,
    ) -> bool {
        now_unix < claims.exp_unix
            && self
                .mac(
                    credential,
                    camera_id,
                    &claims.task_id,
                    claims.captured_ms,
                    claims.exp_unix,
                )
                .verify_slice(&claims.mac)
                .is_ok()
    }
}

/// Reads the clear fields of a ticket; `None` when it is not one.
pub fn parse(ticket: &str) -> Option<TicketClaims> {
    let mut parts = ticket.split('.');
    let (Some("f1"), Some(task), Some(ms), Some(exp), Some(mac), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some(TicketClaims {
        task_id: task.to_string(),
        captured_ms: ms.parse().ok()?,
        exp_unix: exp.parse().ok()?,
        mac: URL_SAFE_NO_PAD.decode(mac).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_verifies_only_for_its_credential_camera_and_lifetime() {
        let key = TicketKey::random();
        let t = key
            .mint(
                "tok_1",
                "gate",
                "gate:motion:sub",
                1_700_000_000_123,
                1_700_000_000,
            )
            .unwrap();
        let claims = parse(&t).unwrap();
        assert_eq!(
            (claims.task_id.as_str(), claims.captured_ms),
            ("gate:motion:sub", 1_700_000_000_123)
        );
        assert!(key.verify(&claims, "tok_1", "gate", 1_700_000_001));
        assert!(
            !key.verify(&claims, "tok_2", "gate", 1_700_000_001),
            "another credential"
        );
        assert!(
            !key.verify(&claims, "tok_1", "yard", 1_700_000_001),
            "another camera"
        );
        assert!(
            !key.verify(&claims, "tok_1", "gate", 1_700_000_000 + LIFETIME_S),
            "expired"
        );
        assert!(
            !TicketKey::random().verify(&claims, "tok_1", "gate", 1_700_000_001),
            "another boot's key"
        );
        let forged = t.replace(".1700000000123.", ".1700000000124.");
        assert!(!key.verify(&parse(&forged).unwrap(), "tok_1", "gate", 1_700_000_001));
        assert!(
            parse("f1.a.b").is_none()
                && parse("garbage").is_none()
                && parse("f1.t.1.2.!!!").is_none()
        );
        assert!(key.mint("tok_1", "gate", "bad.id", 1, 1).is_none());
    }
}
