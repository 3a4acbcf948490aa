//! AWS Signature Version 4 for Bedrock requests, by the `aws-sigv4` crate: moa supplies the
//! request's parts and applies the headers it returns.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

/// Long-lived or temporary AWS credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`).
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret or the token.
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The parts of a request that its signature covers.
pub struct Unsigned<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers that sign `request` for `service` in `region` at `time`: `authorization`,
/// `x-amz-date`, and `x-amz-security-token` with temporary credentials.
pub fn sign_request(
    credentials: &AwsCredentials,
    region: &str,
    service: &str,
    request: &Unsigned<'_>,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let Unsigned {
        method,
        url,
        headers,
        body,
    } = *request;
    let identity = Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "moa",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("signing {url}: {e}"))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| format!("signing {url}: {e}"))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    //! AWS's published SigV4 test suite (credentials AKIDEXAMPLE, 2015-08-30T12:36:00Z,
    //! us-east-1, service `service`): each case's request and the Authorization it must get.

    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn suite_sign(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
        let credentials = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let mut all = vec![("host", "example.amazonaws.com")];
        all.extend_from_slice(headers);
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let signed = sign_request(
            &credentials,
            "us-east-1",
            "service",
            &Unsigned {
                method,
                url,
                headers: &all,
                body,
            },
            time,
        )
        .unwrap();
        let date = signed.iter().find(|(n, _)| n == "x-amz-date").unwrap();
        assert_eq!(date.1, "20150830T123600Z");
        signed
            .into_iter()
            .find(|(n, _)| n == "authorization")
            .unwrap()
            .1
    }

    fn authz(signed_headers: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders={signed_headers}, Signature={signature}"
        )
    }

    #[test]
    fn the_published_test_suite_signs_as_aws_says() {
        // (name, method, url, headers, body, signed headers, signature)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            &'a [u8],
            &'a str,
            &'a str,
        );
        let cases: [Case; 8] = [
            ("get-vanilla", "GET", "https://example.amazonaws.com/", &[], b"",
                "host;x-amz-date", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
            ("get-vanilla-query-order-key-case", "GET", "https://example.amazonaws.com/?Param2=value2&Param1=value1", &[], b"",
                "host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
            ("get-unreserved", "GET", "https://example.amazonaws.com/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", &[], b"",
                "host;x-amz-date", "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
            ("post-vanilla", "POST", "https://example.amazonaws.com/", &[], b"",
                "host;x-amz-date", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
            ("post-vanilla-query", "POST", "https://example.amazonaws.com/?Param1=value1", &[], b"",
                "host;x-amz-date", "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
            ("post-header-key-sort", "POST", "https://example.amazonaws.com/", &[("My-Header1", "value1")], b"",
                "host;my-header1;x-amz-date", "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
            ("post-header-value-case", "POST", "https://example.amazonaws.com/", &[("My-Header1", "VALUE1")], b"",
                "host;my-header1;x-amz-date", "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"),
            ("post-x-www-form-urlencoded", "POST", "https://example.amazonaws.com/",
                &[("Content-Type", "application/x-www-form-urlencoded")], b"Param1=value1",
                "content-type;host;x-amz-date", "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
        ];
        for (name, method, url, headers, body, signed_headers, signature) in cases {
            assert_eq!(
                suite_sign(method, url, headers, body),
                authz(signed_headers, signature),
                "{name}"
            );
        }
    }

    #[test]
    fn temporary_credentials_add_the_session_token() {
        let credentials = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: Some("TOKEN".into()),
        };
        let signed = sign_request(
            &credentials,
            "us-west-2",
            "bedrock",
            &Unsigned {
                method: "POST",
                url: "https://bedrock-runtime.us-west-2.amazonaws.com/model/m/converse",
                headers: &[("content-type", "application/json")],
                body: b"{}",
            },
            SystemTime::now(),
        )
        .unwrap();
        assert!(signed.contains(&("x-amz-security-token".to_string(), "TOKEN".to_string())));
        let auth = &signed.iter().find(|(n, _)| n == "authorization").unwrap().1;
        assert!(auth.contains("/us-west-2/bedrock/aws4_request"), "{auth}");
        assert!(!format!("{credentials:?}").contains("secret"));
    }
}
