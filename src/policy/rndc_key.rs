//! `rndc.key` files: parsing (BIND syntax, tolerant of whitespace and comments as `named` is) and
//! generation, plus key material that never shows up in `Debug` or messages.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::ByteString;

use super::algorithm::Algorithm;
use crate::api::{DATA_ALGORITHM, DATA_KEY_NAME, DATA_RNDC_KEY, DATA_SECRET};

/// Secret key bytes. `Debug` shows only the length; the bytes are wiped on drop.
#[derive(Clone, Eq)]
pub struct KeyMaterial(Vec<u8>);

impl KeyMaterial {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Decodes standard base64, ignoring whitespace as BIND does.
    pub fn from_base64(text: &str) -> Option<Self> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        STANDARD.decode(compact.as_bytes()).ok().map(Self)
    }

    /// The key as standard base64.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.0)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for KeyMaterial {
    /// Compares in time independent of where the keys differ.
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        for byte in self.0.iter_mut() {
            // SAFETY: `byte` is a valid, exclusive reference into the vector.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

/// One TSIG/RNDC key: name, algorithm and secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RndcKey {
    /// Key name (`bindy-operator` for Bindy).
    pub name: String,
    /// HMAC algorithm.
    pub algorithm: Algorithm,
    /// Key bytes.
    pub secret: KeyMaterial,
}

impl RndcKey {
    /// The `rndc.key` file: `key "<name>" {`, `    algorithm <alg>;`, `    secret "<b64>";`, `};`.
    pub fn to_bind(&self) -> String {
        format!(
            "key \"{}\" {{\n    algorithm {};\n    secret \"{}\";\n}};\n",
            escape(&self.name),
            self.algorithm,
            self.secret.to_base64()
        )
    }
}

fn escape(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Why an `rndc.key` file does not parse. Messages give a line, never file content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct RndcKeyError {
    /// 1-based line of the problem.
    pub line: usize,
    /// What is wrong.
    pub problem: RndcKeyProblem,
}

/// What is wrong with an `rndc.key` file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RndcKeyProblem {
    /// No `key` statement.
    #[error(
        "no key statement found (expected key \"<name>\" {{ algorithm <alg>; secret \"<base64>\"; }};)"
    )]
    NoKey,
    /// A second statement after the key.
    #[error("only one key statement is allowed in rndc.key")]
    TrailingContent,
    /// Something other than `key` at the top level.
    #[error("expected a key statement")]
    ExpectedKey,
    /// The key name is missing.
    #[error("expected the key name after \"key\"")]
    ExpectedName,
    /// A punctuation token is missing.
    #[error("expected {0:?}")]
    Expected(&'static str),
    /// An option other than `algorithm` or `secret` inside the key block.
    #[error("unknown option in key block; only algorithm and secret are allowed")]
    UnknownOption,
    /// An option appears twice.
    #[error("{0} is set twice")]
    Duplicate(&'static str),
    /// The algorithm value is missing or unknown.
    #[error("unknown algorithm; use hmac-sha256, hmac-sha384 or hmac-sha512")]
    UnknownAlgorithm,
    /// The secret is not a quoted string.
    #[error("the secret must be a quoted base64 string")]
    UnquotedSecret,
    /// The secret is not base64.
    #[error("the secret is not valid base64")]
    BadBase64,
    /// A required option is missing from the key block.
    #[error("the key block has no {0} option")]
    Missing(&'static str),
    /// A string or comment does not end.
    #[error("unterminated {0}")]
    Unterminated(&'static str),
}

#[derive(Debug, PartialEq)]
enum Token<'a> {
    Word(&'a str),
    Quoted(String),
    Open,
    Close,
    Semi,
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Lexer<'a> {
    fn error(&self, problem: RndcKeyProblem) -> RndcKeyError {
        RndcKeyError {
            line: self.line,
            problem,
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn bump(&mut self, bytes: usize) {
        self.line += self.text[self.pos..self.pos + bytes].matches('\n').count();
        self.pos += bytes;
    }

    /// Skips whitespace and `#`, `//` and `/* */` comments.
    fn skip_trivia(&mut self) -> Result<(), RndcKeyError> {
        loop {
            let rest = self.rest();
            let trimmed = rest.trim_start();
            self.bump(rest.len() - trimmed.len());
            let rest = self.rest();
            if rest.starts_with('#') || rest.starts_with("//") {
                let end = rest.find('\n').unwrap_or(rest.len());
                self.bump(end);
            } else if let Some(body) = rest.strip_prefix("/*") {
                match body.find("*/") {
                    Some(end) => self.bump(end + 4),
                    None => return Err(self.error(RndcKeyProblem::Unterminated("comment"))),
                }
            } else {
                return Ok(());
            }
        }
    }

    fn next(&mut self) -> Result<Option<(usize, Token<'a>)>, RndcKeyError> {
        self.skip_trivia()?;
        let line = self.line;
        let rest = self.rest();
        let Some(first) = rest.chars().next() else {
            return Ok(None);
        };
        let token = match first {
            '{' => {
                self.bump(1);
                Token::Open
            }
            '}' => {
                self.bump(1);
                Token::Close
            }
            ';' => {
                self.bump(1);
                Token::Semi
            }
            '"' => {
                let mut value = String::new();
                let mut escaped = false;
                let mut end = None;
                for (i, c) in rest.char_indices().skip(1) {
                    if escaped {
                        value.push(c);
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        end = Some(i + 1);
                        break;
                    } else {
                        value.push(c);
                    }
                }
                let Some(end) = end else {
                    return Err(self.error(RndcKeyProblem::Unterminated("quoted string")));
                };
                self.bump(end);
                Token::Quoted(value)
            }
            _ => {
                let mut end = rest.len();
                for (i, c) in rest.char_indices() {
                    let starts_comment =
                        c == '#' || rest[i..].starts_with("//") || rest[i..].starts_with("/*");
                    if c.is_whitespace() || matches!(c, '{' | '}' | ';' | '"') || starts_comment {
                        end = i;
                        break;
                    }
                }
                let word = &rest[..end];
                self.bump(end);
                Token::Word(word)
            }
        };
        Ok(Some((line, token)))
    }
}

struct Parser<'a> {
    lexer: Lexer<'a>,
}

impl<'a> Parser<'a> {
    fn next(&mut self) -> Result<(usize, Option<Token<'a>>), RndcKeyError> {
        let line_before = self.lexer.line;
        match self.lexer.next()? {
            Some((line, token)) => Ok((line, Some(token))),
            None => Ok((line_before.max(self.lexer.line), None)),
        }
    }

    fn expect(&mut self, wanted: Token<'static>, name: &'static str) -> Result<(), RndcKeyError> {
        let (line, token) = self.next()?;
        if token.as_ref() == Some(&wanted) {
            Ok(())
        } else {
            Err(RndcKeyError {
                line,
                problem: RndcKeyProblem::Expected(name),
            })
        }
    }
}

/// Parses an `rndc.key` file holding exactly one `key` statement.
pub fn parse_rndc_key(text: &str) -> Result<RndcKey, RndcKeyError> {
    let mut p = Parser {
        lexer: Lexer {
            text,
            pos: 0,
            line: 1,
        },
    };
    let err = |line, problem| RndcKeyError { line, problem };
    match p.next()? {
        (line, None) => return Err(err(line, RndcKeyProblem::NoKey)),
        (_, Some(Token::Word(w))) if w.eq_ignore_ascii_case("key") => {}
        (line, Some(_)) => return Err(err(line, RndcKeyProblem::ExpectedKey)),
    }
    let name = match p.next()? {
        (_, Some(Token::Quoted(name))) => name,
        (_, Some(Token::Word(name))) => name.to_owned(),
        (line, _) => return Err(err(line, RndcKeyProblem::ExpectedName)),
    };
    p.expect(Token::Open, "{")?;
    let mut algorithm = None;
    let mut secret = None;
    let close_line = loop {
        let (line, token) = p.next()?;
        match token {
            Some(Token::Close) => break line,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("algorithm") => {
                if algorithm.is_some() {
                    return Err(err(line, RndcKeyProblem::Duplicate("algorithm")));
                }
                let (line, value) = p.next()?;
                let parsed = match value {
                    Some(Token::Word(v)) => Algorithm::parse_bind(v),
                    Some(Token::Quoted(v)) => Algorithm::parse_bind(&v),
                    _ => None,
                };
                algorithm = Some(parsed.ok_or(err(line, RndcKeyProblem::UnknownAlgorithm))?);
                p.expect(Token::Semi, ";")?;
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("secret") => {
                if secret.is_some() {
                    return Err(err(line, RndcKeyProblem::Duplicate("secret")));
                }
                let (line, value) = p.next()?;
                let Some(Token::Quoted(value)) = value else {
                    return Err(err(line, RndcKeyProblem::UnquotedSecret));
                };
                let material = KeyMaterial::from_base64(&value);
                secret = Some(material.ok_or(err(line, RndcKeyProblem::BadBase64))?);
                p.expect(Token::Semi, ";")?;
            }
            None => return Err(err(line, RndcKeyProblem::Expected("}"))),
            Some(_) => return Err(err(line, RndcKeyProblem::UnknownOption)),
        }
    };
    p.expect(Token::Semi, ";")?;
    if let (line, Some(_)) = p.next()? {
        return Err(err(line, RndcKeyProblem::TrailingContent));
    }
    Ok(RndcKey {
        name,
        algorithm: algorithm.ok_or(err(close_line, RndcKeyProblem::Missing("algorithm")))?,
        secret: secret.ok_or(err(close_line, RndcKeyProblem::Missing("secret")))?,
    })
}

/// The four data keys of a key Secret. `Debug` lists the keys only.
#[derive(Clone, PartialEq)]
pub struct KeySecretData {
    /// The key the data was built from.
    pub key: RndcKey,
    data: BTreeMap<String, ByteString>,
}

impl KeySecretData {
    /// Builds the data keys `key-name`, `algorithm`, `secret` and `rndc.key` for a key.
    pub fn from_key(key: RndcKey) -> Self {
        let entries = [
            (DATA_ALGORITHM, key.algorithm.name().to_owned()),
            (DATA_KEY_NAME, key.name.clone()),
            (DATA_RNDC_KEY, key.to_bind()),
            (DATA_SECRET, key.secret.to_base64()),
        ];
        let data = entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
            .collect();
        Self { key, data }
    }

    /// The Secret `data` map (values are raw bytes; the API serialises them as base64).
    pub fn data(&self) -> &BTreeMap<String, ByteString> {
        &self.data
    }

    /// Takes the Secret `data` map.
    pub fn into_data(self) -> BTreeMap<String, ByteString> {
        self.data
    }
}

impl fmt::Debug for KeySecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySecretData")
            .field("key", &self.key)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Key bytes shorter than the algorithm's output.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{algorithm} needs at least {} key bytes, got {got}", algorithm.output_len())]
pub struct ShortKey {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// How many bytes were given.
    pub got: usize,
}

/// Builds key Secret data from random bytes (the rotator passes `algorithm.output_len()` bytes from
/// the OS CSPRNG).
pub fn key_secret_from_bytes(
    key_name: &str,
    algorithm: Algorithm,
    bytes: &[u8],
) -> Result<KeySecretData, ShortKey> {
    if bytes.len() < algorithm.output_len() {
        return Err(ShortKey {
            algorithm,
            got: bytes.len(),
        });
    }
    Ok(KeySecretData::from_key(RndcKey {
        name: key_name.to_owned(),
        algorithm,
        secret: KeyMaterial::new(bytes.to_vec()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA256_KEY: &str = "c2VjcmV0LWtleS1ieXRlcy0wMTIzNDU2Nzg5YWJjZGVm";

    fn sample(bytes: u8) -> RndcKey {
        RndcKey {
            name: "bindy-operator".to_owned(),
            algorithm: Algorithm::HmacSha256,
            secret: KeyMaterial::new(vec![bytes; 32]),
        }
    }

    #[test]
    fn generated_files_have_the_upstream_four_line_layout() {
        let text = sample(0).to_bind();
        assert_eq!(
            text,
            "key \"bindy-operator\" {\n    algorithm hmac-sha256;\n    secret \
             \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\";\n};\n"
        );
        assert_eq!(parse_rndc_key(&text), Ok(sample(0)));
    }

    #[test]
    fn comments_and_odd_whitespace_are_tolerated() {
        let text = format!(
            "# generated\n// by tsig-keygen\n/* multi\n line */ key\tbindy-operator{{algorithm \
             HMAC-SHA256 ;  # trailing\n secret \"{}\n\" ; }} ;\n",
            SHA256_KEY
        );
        let key = parse_rndc_key(&text).expect("parses");
        assert_eq!(key.name, "bindy-operator");
        assert_eq!(key.algorithm, Algorithm::HmacSha256);
        assert_eq!(key.secret.to_base64(), SHA256_KEY);
    }

    #[test]
    fn quoted_names_may_hold_escaped_quotes() {
        let key = RndcKey {
            name: "odd \"name\"".to_owned(),
            ..sample(1)
        };
        assert_eq!(parse_rndc_key(&key.to_bind()), Ok(key));
    }

    #[test]
    fn broken_files_report_the_line_and_never_the_secret() {
        let cases: &[(&str, usize, RndcKeyProblem)] = &[
            ("", 1, RndcKeyProblem::NoKey),
            ("# only a comment\n", 2, RndcKeyProblem::NoKey),
            ("options { };", 1, RndcKeyProblem::ExpectedKey),
            ("key {", 1, RndcKeyProblem::ExpectedName),
            ("key \"k\"\n algorithm", 2, RndcKeyProblem::Expected("{")),
            (
                "key k {\n algorithm hmac-sha256\n secret \"AA==\"; };",
                3,
                RndcKeyProblem::Expected(";"),
            ),
            (
                "key k {\n algorithm sha256;\n};",
                2,
                RndcKeyProblem::UnknownAlgorithm,
            ),
            (
                "key k {\n secret SECRETVALUE;\n};",
                2,
                RndcKeyProblem::UnquotedSecret,
            ),
            (
                "key k {\n secret \"not base64!\";\n};",
                2,
                RndcKeyProblem::BadBase64,
            ),
            (
                "key k {\n secret \"AA==\";\n};",
                3,
                RndcKeyProblem::Missing("algorithm"),
            ),
            (
                "key k { algorithm hmac-sha256; };",
                1,
                RndcKeyProblem::Missing("secret"),
            ),
            (
                "key k { algorithm hmac-sha256; algorithm hmac-sha256; };",
                1,
                RndcKeyProblem::Duplicate("algorithm"),
            ),
            ("key k { port 953; };", 1, RndcKeyProblem::UnknownOption),
            (
                "key k { algorithm hmac-sha256; secret \"AA==\"; }",
                1,
                RndcKeyProblem::Expected(";"),
            ),
            (
                "key k { algorithm hmac-sha256; secret \"AA==\"; };\nkey j {};",
                2,
                RndcKeyProblem::TrailingContent,
            ),
            (
                "key k { secret \"AA==",
                1,
                RndcKeyProblem::Unterminated("quoted string"),
            ),
            (
                "/* never closed\nkey k {};",
                1,
                RndcKeyProblem::Unterminated("comment"),
            ),
            (
                "key k {\n algorithm hmac-sha256;",
                2,
                RndcKeyProblem::Expected("}"),
            ),
        ];
        for (text, line, problem) in cases {
            let err = parse_rndc_key(text).unwrap_err();
            assert_eq!((&err.line, &err.problem), (line, problem), "{text:?}");
            assert!(!err.to_string().contains("SECRETVALUE"));
        }
    }

    #[test]
    fn debug_output_hides_key_material() {
        let key = sample(7);
        let shown = format!("{key:?} {:?}", KeySecretData::from_key(key.clone()));
        assert!(!shown.contains(&key.secret.to_base64()), "{shown}");
        assert!(shown.contains("32 bytes redacted"));
    }

    #[test]
    fn key_secret_data_has_the_four_data_keys_consistent_with_each_other() {
        let data = key_secret_from_bytes("bindy-operator", Algorithm::HmacSha512, &[9; 64])
            .expect("64 bytes suffice");
        let keys: Vec<_> = data.data().keys().map(String::as_str).collect();
        assert_eq!(keys, ["algorithm", "key-name", "rndc.key", "secret"]);
        let rndc = String::from_utf8(data.data()["rndc.key"].0.clone()).expect("utf-8");
        let parsed = parse_rndc_key(&rndc).expect("parses");
        assert_eq!(parsed, data.key);
        assert_eq!(
            data.data()["secret"].0,
            parsed.secret.to_base64().into_bytes()
        );
        assert_eq!(data.data()["algorithm"].0, b"hmac-sha512");
    }

    #[test]
    fn too_few_bytes_for_the_algorithm_are_refused() {
        let err = key_secret_from_bytes("k", Algorithm::HmacSha384, &[1; 32]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hmac-sha384 needs at least 48 key bytes, got 32"
        );
    }

    #[test]
    fn key_material_compares_by_value() {
        assert_eq!(KeyMaterial::new(vec![1, 2]), KeyMaterial::new(vec![1, 2]));
        assert_ne!(KeyMaterial::new(vec![1, 2]), KeyMaterial::new(vec![1, 3]));
        assert_ne!(KeyMaterial::new(vec![1]), KeyMaterial::new(vec![1, 0]));
    }

    proptest! {
        #[test]
        fn generated_files_parse_back_to_the_same_key(
            name in "[ -~]{0,40}",
            algorithm in 0usize..6,
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let key = RndcKey {
                name,
                algorithm: Algorithm::ALL[algorithm],
                secret: KeyMaterial::new(bytes),
            };
            prop_assert_eq!(parse_rndc_key(&key.to_bind()), Ok(key));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_rndc_key(&text);
        }

        #[test]
        fn arbitrary_bind_like_text_never_panics(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("key"), Just("\"k\""), Just("{"), Just("}"), Just(";"), Just("algorithm"),
                    Just("hmac-sha256"), Just("secret"), Just("\"AA==\""), Just("#"), Just("//"),
                    Just("/*"), Just("*/"), Just("\n"), Just("\""), Just("\\"),
                ],
                0..30,
            )
        ) {
            let _ = parse_rndc_key(&parts.join(" "));
        }
    }
}
