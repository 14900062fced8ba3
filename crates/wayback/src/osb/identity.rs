//! `X-Broker-API-Originating-Identity`: who asked, parsed once for every `/v2` request.
//!
//! The header is `<platform> <base64 of a JSON object>` (OSB "Originating Identity"); for
//! `cloudfoundry` the object carries `user_id`. The rules this broker keeps:
//!
//! 1. No header is normal (a platform that does not send it, a checker): no originator.
//! 2. A header that is there but malformed is refused with 400 and a description of what is
//!    wrong, on every `/v2` route, before any business code runs: a platform that sends the
//!    header means it to be recorded, and an audit trail that silently drops who asked would
//!    be wrong without anyone knowing.
//! 3. Bounded: the header at most [`MAX_HEADER_BYTES`], the decoded object at most
//!    [`Originator::MAX_IDENTITY_BYTES`] as compact JSON, the user id at most
//!    [`MAX_USER_BYTES`]; longer is malformed (rule 2), never truncated silently.
//!
//! Imports `domain` only.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde_json::Value;

use crate::domain::Originator;

pub const HEADER: &str = "x-broker-api-originating-identity";
/// The longest header accepted: base64 of a 1 KiB object, the platform word and slack.
pub const MAX_HEADER_BYTES: usize = 1536;
/// The longest user id kept.
pub const MAX_USER_BYTES: usize = 256;
const MAX_PLATFORM_BYTES: usize = 64;

/// Standard base64, with or without its padding (platforms differ).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses the header's raw bytes (`None`: no header). `Err` is the description of a 400.
pub fn parse(header: Option<&[u8]>) -> Result<Option<Originator>, String> {
    let Some(raw) = header else {
        return Ok(None);
    };
    parse_value(raw).map(Some).map_err(|why| {
        format!(
            "The X-Broker-API-Originating-Identity header is malformed: {why}. Send \
             \"<platform> <base64 of a JSON object>\" (for Cloud Foundry the object carries \
             \"user_id\"), or leave the header out."
        )
    })
}

fn parse_value(raw: &[u8]) -> Result<Originator, String> {
    if raw.len() > MAX_HEADER_BYTES {
        return Err(format!(
            "it is {} bytes long, more than {MAX_HEADER_BYTES}",
            raw.len()
        ));
    }
    let text = std::str::from_utf8(raw)
        .ok()
        .filter(|t| t.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
        .ok_or("it holds characters other than printable ASCII")?;
    let mut words = text.split_ascii_whitespace();
    let (Some(platform), Some(encoded), None) = (words.next(), words.next(), words.next()) else {
        return Err("it must be two words, a platform and a base64 value".into());
    };
    if platform.len() > MAX_PLATFORM_BYTES
        || !platform
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "the platform {:?} is not a word of letters, digits, '-', '_' or '.' (at most {MAX_PLATFORM_BYTES})",
            clip(platform)
        ));
    }
    let platform = platform.to_ascii_lowercase();
    let decoded = BASE64
        .decode(encoded)
        .map_err(|e| format!("the value after {platform:?} is not base64 ({e})"))?;
    let object = match serde_json::from_slice::<Value>(&decoded) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("the decoded value is JSON but not an object".into()),
        Err(_) => return Err("the decoded value is not JSON".into()),
    };
    let identity = Value::Object(object.clone()).to_string();
    if identity.len() > Originator::MAX_IDENTITY_BYTES {
        return Err(format!(
            "the identity object is {} bytes, more than {}",
            identity.len(),
            Originator::MAX_IDENTITY_BYTES
        ));
    }
    let mut user_id = None;
    for key in ["user_id", "username", "uid"] {
        match object.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_USER_BYTES => {
                user_id = Some(s.trim().to_string());
                break;
            }
            Some(_) => {
                return Err(format!(
                    "\"{key}\" must be a non-empty string of at most {MAX_USER_BYTES} bytes"
                ))
            }
        }
    }
    if platform == "cloudfoundry" && object.get("user_id").is_none() {
        return Err("a cloudfoundry identity must carry \"user_id\"".into());
    }
    Ok(Originator {
        platform,
        user_id,
        identity,
    })
}

/// The originator `osb_guard` parsed for this request (`None`: the request had no header).
pub fn of(req: &actix_web::HttpRequest) -> Option<Originator> {
    use actix_web::HttpMessage;
    req.extensions().get::<Originator>().cloned()
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(platform: &str, json: &str) -> String {
        format!(
            "{platform} {}",
            base64::engine::general_purpose::STANDARD.encode(json)
        )
    }

    #[test]
    fn absent_is_none() {
        assert_eq!(parse(None), Ok(None));
    }

    #[test]
    fn cloud_foundry_and_others() {
        let cf = header(
            "cloudfoundry",
            r#"{"user_id":"683ea748-3092-4ff4-b656-39cacc4d5360"}"#,
        );
        let o = parse(Some(cf.as_bytes())).unwrap().unwrap();
        assert_eq!(o.platform, "cloudfoundry");
        assert_eq!(o.user(), "683ea748-3092-4ff4-b656-39cacc4d5360");
        assert_eq!(
            o.identity,
            r#"{"user_id":"683ea748-3092-4ff4-b656-39cacc4d5360"}"#
        );
        let unpadded = cf.trim_end_matches('=').to_string();
        assert_eq!(parse(Some(unpadded.as_bytes())).unwrap().unwrap(), o);
        let k8s = header(
            "Kubernetes",
            r#"{"username":"duke","uid":"c2dde242","groups":[]}"#,
        );
        let o = parse(Some(k8s.as_bytes())).unwrap().unwrap();
        assert_eq!((o.platform.as_str(), o.user()), ("kubernetes", "duke"));
        let anonymous = header("other", r#"{}"#);
        assert_eq!(
            parse(Some(anonymous.as_bytes())).unwrap().unwrap().user(),
            "unknown"
        );
    }

    #[test]
    fn malformed_headers_say_why() {
        let long_user = format!(r#"{{"user_id":"{}"}}"#, "u".repeat(300));
        let big = format!(r#"{{"user_id":"u","x":"{}"}}"#, "x".repeat(1100));
        let cases: Vec<(&str, String, &str)> = vec![
            ("empty", String::new(), "two words"),
            ("one word", "cloudfoundry".into(), "two words"),
            ("three words", "cloudfoundry abc def".into(), "two words"),
            ("not base64", "cloudfoundry !!!".into(), "not base64"),
            ("not JSON", header("cloudfoundry", "user"), "not JSON"),
            ("an array", header("cloudfoundry", "[1]"), "not an object"),
            (
                "no user_id",
                header("cloudfoundry", r#"{"name":"x"}"#),
                "user_id",
            ),
            (
                "number user_id",
                header("cloudfoundry", r#"{"user_id":7}"#),
                "user_id",
            ),
            (
                "long user_id",
                header("cloudfoundry", &long_user),
                "user_id",
            ),
            ("big object", header("cloudfoundry", &big), "bytes"),
            ("bad platform", header("cloud/foundry", "{}"), "platform"),
            (
                "control char",
                "cloudfoundry\tabc".into(),
                "printable ASCII",
            ),
            (
                "huge header",
                format!("cloudfoundry {}", "A".repeat(4000)),
                "bytes long",
            ),
        ];
        for (why, value, says) in cases {
            let e = parse(Some(value.as_bytes())).expect_err(why);
            assert!(e.contains(says), "{why}: {e}");
            assert!(e.starts_with("The X-Broker-API-Originating-Identity header is malformed"));
        }
    }
}
