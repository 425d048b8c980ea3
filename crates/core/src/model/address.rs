//! Resource addresses. A stack's own resource is `vpc`; an instance of a
//! resource with `for_each` is `private["a"]`; a resource of a component
//! use is `app.deployment`, of one of its instances `zone["a"].subnet`.
//! Instance keys are restricted to letters, digits, `_` and `-`, so an
//! address can go into cloud tags (which allow no brackets or quotes) as
//! `private:a` and come back unchanged.

/// Whether `key` can name an instance.
pub fn valid_instance_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `name["key"]`.
pub fn instance(name: &str, key: &str) -> String {
    format!("{name}[\"{key}\"]")
}

/// The address as it is written into tags and labels.
pub fn to_tag(address: &str) -> String {
    address.replace("[\"", ":").replace("\"]", "")
}

/// The address a tag value names (the inverse of [`to_tag`]).
pub fn from_tag(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len() + 4);
    let mut in_key = false;
    for c in tag.chars() {
        match c {
            ':' => {
                if in_key {
                    out.push_str("\"]");
                }
                out.push_str("[\"");
                in_key = true;
            }
            '.' if in_key => {
                out.push_str("\"].");
                in_key = false;
            }
            _ => out.push(c),
        }
    }
    if in_key {
        out.push_str("\"]");
    }
    out
}

/// The segments of an address (`app`, `private["a"]`), checked. `Err` says
/// what is wrong.
pub fn parse(address: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut rest = address;
    loop {
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let name = &rest[..end];
        if !valid_name(name) {
            return Err(format!(
                "`{name}` in `{address}` is not a name: use lowercase letters, digits, `_` and `-`, starting with a letter"
            ));
        }
        rest = &rest[end..];
        let mut key = None;
        if let Some(after) = rest.strip_prefix("[\"") {
            let Some(close) = after.find("\"]") else {
                return Err(format!("`{address}`: `[\"` is not closed by `\"]`"));
            };
            let k = &after[..close];
            if !valid_instance_key(k) {
                return Err(format!(
                    "`{address}`: instance key `{k}` may only have letters, digits, `_` and `-`"
                ));
            }
            key = Some(k.to_string());
            rest = &after[close + 2..];
        }
        out.push((name.to_string(), key));
        if rest.is_empty() {
            return Ok(out);
        }
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => {
                return Err(format!(
                    "`{address}`: expected `.` or the end after `{}`",
                    &address[..address.len() - rest.len()]
                ))
            }
        }
    }
}

/// A resource or component name within its file.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The address as a Kubernetes label value (no `:` allowed there; names
/// never hold `.`, so `..` marks an instance key).
pub fn to_label(address: &str) -> String {
    to_tag(address).replace(':', "..")
}

/// The address a label value names (the inverse of [`to_label`]).
pub fn from_label(label: &str) -> String {
    from_tag(&label.replace("..", ":"))
}

/// Whether `address` is `prefix` or lies under it (`app` holds `app.db`
/// and `app["x"].db`; `private` holds `private["a"]`).
pub fn is_under(address: &str, prefix: &str) -> bool {
    address == prefix
        || address
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with("[\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for a in [
            "vpc",
            "private[\"a\"]",
            "app.deployment",
            "zone[\"us-east-1a\"].subnet",
            "net[\"x\"].sub[\"y_2\"]",
        ] {
            let t = to_tag(a);
            assert!(!t.contains('"') && !t.contains('['), "{t}");
            assert_eq!(from_tag(&t), a);
            let l = to_label(a);
            assert!(!l.contains(':'), "{l}");
            assert_eq!(from_label(&l), a);
        }
    }

    #[test]
    fn parses_and_refuses_addresses() {
        assert_eq!(
            parse("app.private[\"a\"]").unwrap(),
            vec![("app".into(), None), ("private".into(), Some("a".into()))]
        );
        for bad in ["", "App", "a..b", "a[\"x", "a[\"x y\"]", "a[\"x\"]b", "a."] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(is_under("app.db", "app"));
        assert!(is_under("app[\"x\"].db", "app"));
        assert!(!is_under("apps.db", "app"));
    }
}
