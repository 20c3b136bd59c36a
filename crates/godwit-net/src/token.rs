//! Tokens, scopes and token files.
//!
//! A token file is either one line holding a token (it then has every scope — what
//! existing installations have), or lines `SCOPES TOKEN` where SCOPES is a comma list
//! of `read`, `operate`, `exec`, `service` (or `all`). `#` starts a comment line.
//! Tokens are at least [`MIN_TOKEN_LEN`] characters without white space.
//!
//! Scopes: `read` sees (GET routes); `operate` changes (names, store, signals) and
//! implies `read` and `service`; `exec` starts programs and implies nothing (give
//! `read,operate,exec` for everything); `service` is the narrow capability the agent
//! gives the programs it starts: the name service and the checkpoint store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::NetError;

/// Shortest token accepted, in characters.
pub const MIN_TOKEN_LEN: usize = 16;

/// One capability of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// See: every GET route.
    Read,
    /// Change: names, store, signals. Implies `Read` and `Service`.
    Operate,
    /// Start programs (`POST /v1/exec`). Implies nothing else.
    Exec,
    /// What a program started by the agent needs: resolve, advertise and withdraw
    /// names; list, fetch and put checkpoints; health. Nothing else (no process list,
    /// no exec, no signals).
    Service,
}

impl Scope {
    const ALL: [Scope; 4] = [Scope::Read, Scope::Operate, Scope::Exec, Scope::Service];

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Operate => 2,
            Scope::Exec => 4,
            Scope::Service => 8,
        }
    }

    /// The name used in token files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Exec => "exec",
            Scope::Service => "service",
        }
    }

    /// Parses a scope name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|sc| sc.name() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes, closed under the implications (`operate` ⇒ `read`, `service`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const NONE: Scopes = Scopes(0);

    /// Every scope.
    pub fn all() -> Scopes {
        Scopes(0b1111)
    }

    /// The set of `scopes` plus what they imply.
    pub fn of(scopes: &[Scope]) -> Scopes {
        let mut bits = 0;
        for s in scopes {
            bits |= s.bit();
            if *s == Scope::Operate {
                bits |= Scope::Read.bit() | Scope::Service.bit();
            }
        }
        Scopes(bits)
    }

    /// Whether `scope` is granted.
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The scopes granted, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.allows(*s))
    }

    /// The wire form (one byte).
    pub fn to_byte(self) -> u8 {
        self.0
    }

    /// From the wire form; `None` for bits we do not know.
    pub fn from_byte(b: u8) -> Option<Scopes> {
        (b & !0b1111 == 0).then_some(Scopes(b))
    }

    /// Parses `read,operate,...` (`all` for every scope).
    pub fn parse(s: &str) -> Result<Scopes, String> {
        if s == "all" {
            return Ok(Scopes::all());
        }
        let mut v = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            v.push(Scope::parse(part).ok_or_else(|| {
                format!("unknown scope `{part}` (read, operate, exec, service or all)")
            })?);
        }
        Ok(Scopes::of(&v))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Scope::name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// A secret token and the scopes it was given in its file. `Debug` does not show the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    secret: String,
    scopes: Scopes,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} chars>, {})", self.secret.len(), self.scopes)
    }
}

fn check_secret(secret: &str) -> Result<(), String> {
    if secret.chars().count() < MIN_TOKEN_LEN {
        return Err(format!(
            "a token must be at least {MIN_TOKEN_LEN} characters (this one has {})",
            secret.chars().count()
        ));
    }
    if secret.chars().any(char::is_whitespace) {
        return Err("a token cannot contain white space".into());
    }
    Ok(())
}

impl Token {
    /// A token with every scope (the client side does not need to know its scopes:
    /// the server says which it grants).
    pub fn new(secret: impl Into<String>) -> Result<Token, NetError> {
        let secret = secret.into().trim().to_string();
        check_secret(&secret).map_err(NetError::BadToken)?;
        Ok(Token {
            secret,
            scopes: Scopes::all(),
        })
    }

    /// A fresh random token (32 bytes, hex) with `scopes`.
    pub fn random(scopes: Scopes) -> Result<Token, NetError> {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b)
            .map_err(|e| NetError::BadToken(format!("no randomness for a new token: {e}")))?;
        let secret = b.iter().map(|x| format!("{x:02x}")).collect();
        Ok(Token { secret, scopes })
    }

    /// The first token of a token file (any of the two formats). The file must not be
    /// readable or writable by group or others.
    pub fn load(path: &Path) -> Result<Token, NetError> {
        let entries = parse_file(path)?;
        let (secret, scopes) = entries
            .into_iter()
            .next()
            .ok_or_else(|| NetError::TokenFile {
                path: path.to_path_buf(),
                detail: "the file holds no token".into(),
            })?;
        Ok(Token { secret, scopes })
    }

    /// The first token of the file at `path` that allows `scope` (an agent
    /// calling its peers, say to send them a migration, needs `operate`).
    pub fn load_for(path: &Path, scope: Scope) -> Result<Token, NetError> {
        parse_file(path)?
            .into_iter()
            .find(|(_, scopes)| scopes.allows(scope))
            .map(|(secret, scopes)| Token { secret, scopes })
            .ok_or_else(|| NetError::TokenFile {
                path: path.to_path_buf(),
                detail: format!("no token in the file has the {} scope", scope.name()),
            })
    }

    /// The secret (to hand to a program, e.g. in its environment).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The same secret with other scopes (a server registering a token it granted).
    pub fn with_scopes(mut self, scopes: Scopes) -> Token {
        self.scopes = scopes;
        self
    }

    /// The scopes written with it in its file.
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    pub(crate) fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; new_from_slice cannot fail for it.
        <Hmac<Sha256> as Mac>::new_from_slice(self.secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }
}

fn check_mode(path: &Path) -> Result<(), NetError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| NetError::File {
        op: "reading the token file",
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(NetError::TokenFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn parse_file(path: &Path) -> Result<Vec<(String, Scopes)>, NetError> {
    check_mode(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| NetError::File {
        op: "reading the token file",
        path: path.to_path_buf(),
        source,
    })?;
    parse_text(&text).map_err(|detail| NetError::TokenFile {
        path: path.to_path_buf(),
        detail,
    })
}

/// Parses token-file text into (secret, scopes) pairs.
pub(crate) fn parse_text(text: &str) -> Result<Vec<(String, Scopes)>, String> {
    let mut out: Vec<(String, Scopes)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (secret, scopes) = match fields.as_slice() {
            [t] => (*t, Scopes::all()),
            [s, t] => (
                *t,
                Scopes::parse(s).map_err(|e| format!("line {}: {e}", i + 1))?,
            ),
            _ => {
                return Err(format!(
                    "line {}: expected `TOKEN` or `SCOPES TOKEN` (e.g. `read,operate TOKEN`)",
                    i + 1
                ))
            }
        };
        check_secret(secret).map_err(|e| format!("line {}: {e}", i + 1))?;
        if out.iter().any(|(t, _)| t == secret) {
            return Err(format!("line {}: the same token appears twice", i + 1));
        }
        out.push((secret.to_string(), scopes));
    }
    if out.is_empty() {
        return Err("the file holds no token".into());
    }
    Ok(out)
}

/// The tokens a server accepts, each with its scopes. Cheap to clone (shared); tokens
/// can be added and revoked at run time (the agent's per-program tokens).
#[derive(Clone, Default)]
pub struct TokenSet {
    inner: Arc<RwLock<Vec<Token>>>,
    path: Option<PathBuf>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("tokens", &self.len())
            .field("path", &self.path)
            .finish()
    }
}

impl TokenSet {
    /// Loads a token file. Refuses a file readable or writable by group or others.
    pub fn load(path: &Path) -> Result<TokenSet, NetError> {
        let entries = parse_file(path)?;
        Ok(TokenSet {
            inner: Arc::new(RwLock::new(
                entries
                    .into_iter()
                    .map(|(secret, scopes)| Token { secret, scopes })
                    .collect(),
            )),
            path: Some(path.to_path_buf()),
        })
    }

    /// A set of the given tokens (each with its own scopes).
    pub fn from_tokens(tokens: impl IntoIterator<Item = Token>) -> TokenSet {
        TokenSet {
            inner: Arc::new(RwLock::new(tokens.into_iter().collect())),
            path: None,
        }
    }

    /// The file it was loaded from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a token (e.g. a fresh per-program token).
    pub fn insert(&self, token: Token) {
        self.write().push(token);
    }

    /// Removes a token; returns whether it was there.
    pub fn revoke(&self, token: &Token) -> bool {
        let mut v = self.write();
        let before = v.len();
        v.retain(|t| t.secret != token.secret);
        v.len() != before
    }

    /// Whether `secret` is one of the tokens (constant time per token).
    pub fn contains_secret(&self, secret: &str) -> bool {
        let mut found = false;
        for t in self.read().iter() {
            let a = t.secret.as_bytes();
            let b = secret.as_bytes();
            let eq =
                a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
            found |= eq;
        }
        found
    }

    /// The scopes of the token whose secret is `secret`, if it is one of the set
    /// (every token compared, each in constant time).
    pub fn scopes_of(&self, secret: &str) -> Option<Scopes> {
        let mut found = None;
        for t in self.read().iter() {
            let a = t.secret.as_bytes();
            let b = secret.as_bytes();
            let eq =
                a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
            if eq {
                found = Some(t.scopes);
            }
        }
        found
    }

    pub(crate) fn snapshot(&self) -> Vec<Token> {
        self.read().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Token>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Token>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_imply_and_print() {
        let s = Scopes::parse("operate").unwrap();
        assert!(s.allows(Scope::Read) && s.allows(Scope::Service) && !s.allows(Scope::Exec));
        let e = Scopes::parse("exec").unwrap();
        assert!(e.allows(Scope::Exec) && !e.allows(Scope::Read));
        assert_eq!(Scopes::parse("read,exec").unwrap().to_string(), "read,exec");
        assert_eq!(Scopes::all().to_string(), "read,operate,exec,service");
        assert!(Scopes::parse("read,admin").is_err());
        assert_eq!(
            Scopes::from_byte(Scopes::all().to_byte()),
            Some(Scopes::all())
        );
        assert_eq!(Scopes::from_byte(0x80), None);
    }

    #[test]
    fn token_file_formats() {
        let v = parse_text("only-one-token-0123456789\n").unwrap();
        assert_eq!(v, vec![("only-one-token-0123456789".into(), Scopes::all())]);
        let v = parse_text(
            "# comment\nread reader-token-0123456789\n\nread,operate operator-token-0123456789\nread,operate,exec admin-token-0123456789\n",
        )
        .unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].1, Scopes::of(&[Scope::Read]));
        assert_eq!(v[1].1, Scopes::of(&[Scope::Operate]));
        assert!(v[2].1.allows(Scope::Exec));
        let e = parse_text("short\n").unwrap_err();
        assert!(e.contains("at least 16"), "{e}");
        let e = parse_text("read,root token-0123456789abcdef\n").unwrap_err();
        assert!(e.contains("unknown scope `root`"), "{e}");
        assert!(parse_text("# nothing\n").is_err());
        assert!(parse_text("a b c\n").is_err());
        assert!(parse_text("read t-0123456789abcdef\nexec t-0123456789abcdef\n").is_err());
    }

    #[test]
    fn insert_revoke_contains() {
        let set = TokenSet::from_tokens([Token::new("base-token-0123456789").unwrap()]);
        let t = Token::random(Scopes::of(&[Scope::Read, Scope::Service])).unwrap();
        assert_eq!(t.secret().len(), 64);
        set.insert(t.clone());
        assert!(set.contains_secret(t.secret()));
        assert!(set.revoke(&t));
        assert!(!set.contains_secret(t.secret()));
        assert!(set.contains_secret("base-token-0123456789"));
        assert!(!format!("{t:?}").contains(t.secret()));
    }
}
