//! `--chown=USER[:GROUP]` and `--chmod=MODE` of COPY/ADD. Numeric ids are
//! used as they are; names are looked up in the stage's /etc/passwd and
//! /etc/group, as docker does.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OwnerError {
    #[error("--chown: empty user in {0:?}")]
    Empty(String),
    #[error("--chown: user {user:?} needs /etc/passwd in the image, which it does not have")]
    NoPasswd { user: String },
    #[error("--chown: group {group:?} needs /etc/group in the image, which it does not have")]
    NoGroup { group: String },
    #[error("--chown: no user {0:?} in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("--chown: no group {0:?} in the image's /etc/group")]
    UnknownGroup(String),
    #[error("--chmod: invalid mode {0:?} (want octal, e.g. 0755)")]
    Mode(String),
}

/// What a chown spec needs looked up by name.
pub fn needs_names(spec: &str) -> (bool, bool) {
    let (user, group) = spec.split_once(':').map_or((spec, None), |(u, g)| (u, Some(g)));
    let numeric = |s: &str| s.parse::<u32>().is_ok();
    (!numeric(user), group.is_some_and(|g| !numeric(g)))
}

/// `name:x:uid:gid:...` (or `name:x:gid:...` for groups): the ids of `name`.
fn lookup(file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    file.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next();
        let id = fields.next()?.trim().parse().ok()?;
        let second = fields.next().and_then(|f| f.trim().parse().ok());
        Some((id, second))
    })
}

/// Resolve `USER[:GROUP]` to (uid, gid). A user alone gets their primary
/// group (a numeric uid alone: the same number as gid).
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<(u32, u32), OwnerError> {
    let (user, group_name) = spec.split_once(':').map_or((spec, None), |(u, g)| (u, Some(g)));
    if user.is_empty() || group_name == Some("") {
        return Err(OwnerError::Empty(spec.to_string()));
    }
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => {
            let passwd = passwd.ok_or_else(|| OwnerError::NoPasswd { user: user.to_string() })?;
            let (uid, gid) = lookup(passwd, user).ok_or_else(|| OwnerError::UnknownUser(user.to_string()))?;
            (uid, gid.unwrap_or(uid))
        }
    };
    let gid = match group_name {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let file = group.ok_or_else(|| OwnerError::NoGroup { group: g.to_string() })?;
                lookup(file, g).ok_or_else(|| OwnerError::UnknownGroup(g.to_string()))?.0
            }
        },
    };
    Ok((uid, gid))
}

/// An octal `--chmod` mode.
pub fn parse_mode(text: &str) -> Result<u32, OwnerError> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !text.is_empty())
        .ok_or_else(|| OwnerError::Mode(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\n";

    #[test]
    fn numeric_and_names() {
        assert_eq!(resolve("10:20", None, None), Ok((10, 20)));
        assert_eq!(resolve("10", None, None), Ok((10, 10)));
        assert_eq!(resolve("app", Some(PASSWD), None), Ok((1000, 1001)));
        assert_eq!(resolve("app:staff", Some(PASSWD), Some(GROUP)), Ok((1000, 50)));
        assert_eq!(resolve("1:staff", None, Some(GROUP)), Ok((1, 50)));
        assert_eq!(resolve("app", None, None), Err(OwnerError::NoPasswd { user: "app".into() }));
        assert_eq!(resolve("bob", Some(PASSWD), None), Err(OwnerError::UnknownUser("bob".into())));
        assert_eq!(resolve("1:wheel", None, Some(GROUP)), Err(OwnerError::UnknownGroup("wheel".into())));
        assert_eq!(needs_names("app:1"), (true, false));
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert!(parse_mode("u+x").is_err());
        assert!(parse_mode("99999").is_err());
    }
}
