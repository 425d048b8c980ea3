//! Functions callable in `${ ... }`: the few that infrastructure code needs
//! all the time. Each states its arguments' types, so a call is checked
//! while the stack loads; a call whose arguments are all known is evaluated
//! then, the others when the apply knows the referenced values.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value as Json;

use ralph_core::model::json_to_text;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    CidrSubnet,
    CidrHost,
    Join,
    Lookup,
    Format,
    Length,
    Concat,
    Upper,
    Lower,
    Keys,
    Values,
}

/// What an argument must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    String,
    Int,
    List,
    Map,
    Any,
    /// A list, a map or a string (length).
    Sized,
}

impl Arg {
    fn describe(self) -> &'static str {
        match self {
            Arg::String => "a string",
            Arg::Int => "a whole number",
            Arg::List => "a list",
            Arg::Map => "a mapping",
            Arg::Any => "any value",
            Arg::Sized => "a list, a mapping or a string",
        }
    }

    fn accepts(self, v: &Json) -> bool {
        match self {
            Arg::String => v.is_string() || v.is_number() || v.is_boolean(),
            Arg::Int => v.as_i64().is_some(),
            Arg::List => v.is_array(),
            Arg::Map => v.is_object(),
            Arg::Any => true,
            Arg::Sized => v.is_array() || v.is_object() || v.is_string(),
        }
    }
}

pub const NAMES: &[&str] = &[
    "cidrsubnet",
    "cidrhost",
    "join",
    "lookup",
    "format",
    "length",
    "concat",
    "upper",
    "lower",
    "keys",
    "values",
];

impl Func {
    pub fn by_name(name: &str) -> Option<Func> {
        Some(match name {
            "cidrsubnet" => Func::CidrSubnet,
            "cidrhost" => Func::CidrHost,
            "join" => Func::Join,
            "lookup" => Func::Lookup,
            "format" => Func::Format,
            "length" => Func::Length,
            "concat" => Func::Concat,
            "upper" => Func::Upper,
            "lower" => Func::Lower,
            "keys" => Func::Keys,
            "values" => Func::Values,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Func::CidrSubnet => "cidrsubnet",
            Func::CidrHost => "cidrhost",
            Func::Join => "join",
            Func::Lookup => "lookup",
            Func::Format => "format",
            Func::Length => "length",
            Func::Concat => "concat",
            Func::Upper => "upper",
            Func::Lower => "lower",
            Func::Keys => "keys",
            Func::Values => "values",
        }
    }

    /// How it is called, for messages.
    pub fn signature(self) -> &'static str {
        match self {
            Func::CidrSubnet => "cidrsubnet(prefix, newbits, netnum)",
            Func::CidrHost => "cidrhost(prefix, hostnum)",
            Func::Join => "join(separator, list)",
            Func::Lookup => "lookup(map, key) or lookup(map, key, default)",
            Func::Format => "format(spec, values...) with %s, %d and %%",
            Func::Length => "length(list, mapping or string)",
            Func::Concat => "concat(list, list...)",
            Func::Upper => "upper(string)",
            Func::Lower => "lower(string)",
            Func::Keys => "keys(mapping)",
            Func::Values => "values(mapping)",
        }
    }

    /// The type each argument must have; the last repeats for variadic calls.
    fn params(self) -> (&'static [Arg], usize, Option<usize>) {
        match self {
            Func::CidrSubnet => (&[Arg::String, Arg::Int, Arg::Int], 3, Some(3)),
            Func::CidrHost => (&[Arg::String, Arg::Int], 2, Some(2)),
            Func::Join => (&[Arg::String, Arg::List], 2, Some(2)),
            Func::Lookup => (&[Arg::Map, Arg::String, Arg::Any], 2, Some(3)),
            Func::Format => (&[Arg::String, Arg::Any], 1, None),
            Func::Length => (&[Arg::Sized], 1, Some(1)),
            Func::Concat => (&[Arg::List], 1, None),
            Func::Upper | Func::Lower => (&[Arg::String], 1, Some(1)),
            Func::Keys | Func::Values => (&[Arg::Map], 1, Some(1)),
        }
    }

    /// Whether the result is a string (so it may stand for a string property).
    pub fn returns_string(self) -> bool {
        matches!(
            self,
            Func::CidrSubnet
                | Func::CidrHost
                | Func::Join
                | Func::Format
                | Func::Upper
                | Func::Lower
        )
    }

    pub fn check_arity(self, n: usize) -> Result<(), String> {
        let (_, min, max) = self.params();
        if n < min || max.is_some_and(|m| n > m) {
            let expected = match max {
                Some(m) if m == min => format!("{min}"),
                Some(m) => format!("{min} to {m}"),
                None => format!("at least {min}"),
            };
            return Err(format!(
                "`{}` takes {expected} argument(s), given {n}: {}",
                self.name(),
                self.signature()
            ));
        }
        Ok(())
    }

    /// Checks argument `i` when its value is known.
    pub fn check_arg(self, i: usize, v: &Json) -> Result<(), String> {
        let (params, _, _) = self.params();
        let want = params[i.min(params.len() - 1)];
        if want.accepts(v) {
            return Ok(());
        }
        Err(format!(
            "argument {} of `{}` must be {}, found {}",
            i + 1,
            self.name(),
            want.describe(),
            describe(v)
        ))
    }

    /// Evaluates the call on known arguments.
    pub fn call(self, args: &[Json]) -> Result<Json, String> {
        self.check_arity(args.len())?;
        for (i, a) in args.iter().enumerate() {
            self.check_arg(i, a)?;
        }
        let text = |v: &Json| json_to_text(v);
        let int = |v: &Json| v.as_i64().unwrap_or_default();
        Ok(match self {
            Func::CidrSubnet => cidr_subnet(args)?,
            Func::CidrHost => {
                let net = cidr(&args[0])?;
                let host = int(&args[1]);
                let size = 1u64 << (32 - net.prefix_len());
                if host < 0 || host as u64 >= size {
                    return Err(format!(
                        "cidrhost: {net} has {size} addresses; host number {host} is out of range"
                    ));
                }
                let addr = Ipv4Addr::from((u32::from(net.network()) as u64 + host as u64) as u32);
                Json::String(addr.to_string())
            }
            Func::Join => {
                let items = args[1].as_array().cloned().unwrap_or_default();
                Json::String(
                    items
                        .iter()
                        .map(text)
                        .collect::<Vec<_>>()
                        .join(&text(&args[0])),
                )
            }
            Func::Lookup => {
                let key = text(&args[1]);
                match args[0].get(&key) {
                    Some(v) => v.clone(),
                    None => match args.get(2) {
                        Some(d) => d.clone(),
                        None => {
                            let keys: Vec<&String> = args[0]
                                .as_object()
                                .map(|m| m.keys().collect())
                                .unwrap_or_default();
                            return Err(format!(
                                "lookup: the mapping has no key `{key}` (it has: {}); give a default as the third argument",
                                keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                            ));
                        }
                    },
                }
            }
            Func::Format => format_text(args)?,
            Func::Length => Json::from(match &args[0] {
                Json::Array(a) => a.len(),
                Json::Object(m) => m.len(),
                Json::String(s) => s.chars().count(),
                _ => 0,
            }),
            Func::Concat => Json::Array(
                args.iter()
                    .flat_map(|a| a.as_array().cloned().unwrap_or_default())
                    .collect(),
            ),
            Func::Upper => Json::String(text(&args[0]).to_uppercase()),
            Func::Lower => Json::String(text(&args[0]).to_lowercase()),
            // In key order, whatever order the mapping was written in.
            Func::Keys | Func::Values => {
                let mut entries: Vec<(&String, &Json)> = args[0]
                    .as_object()
                    .map(|m| m.iter().collect())
                    .unwrap_or_default();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Json::Array(
                    entries
                        .into_iter()
                        .map(|(k, v)| {
                            if self == Func::Keys {
                                Json::String(k.clone())
                            } else {
                                v.clone()
                            }
                        })
                        .collect(),
                )
            }
        })
    }
}

/// `cidrsubnet(prefix, newbits, netnum)`: the netnum-th subnet of the
/// prefix, newbits longer.
fn cidr_subnet(args: &[Json]) -> Result<Json, String> {
    let net = cidr(&args[0])?;
    let int = |v: &Json| v.as_i64().unwrap_or_default();
    let (newbits, netnum) = (int(&args[1]), int(&args[2]));
    let prefix = i64::from(net.prefix_len()) + newbits;
    if !(0..=32).contains(&newbits) || prefix > 32 {
        return Err(format!(
            "cidrsubnet: {net} with {newbits} more bits would be longer than /32"
        ));
    }
    let count = 1u64 << newbits;
    if netnum < 0 || netnum as u64 >= count {
        return Err(format!(
            "cidrsubnet: {net} has {count} subnets of /{prefix}, numbered 0 to {}; {netnum} is out of range",
            count - 1
        ));
    }
    let base = u32::from(net.network()) as u64;
    let step = 1u64 << (32 - prefix);
    let addr = Ipv4Addr::from((base + netnum as u64 * step) as u32);
    Ok(Json::String(format!("{addr}/{prefix}")))
}

/// `format(spec, values...)`: %s and %d replaced in order, %% a percent sign.
fn format_text(args: &[Json]) -> Result<Json, String> {
    let text = |v: &Json| json_to_text(v);
    let spec = text(&args[0]);
    let mut out = String::new();
    let mut next = 1;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(verb @ ('s' | 'd')) => {
                let Some(v) = args.get(next) else {
                    return Err(format!(
                        "format: `{spec}` has more verbs than the {} value(s) given",
                        args.len() - 1
                    ));
                };
                if verb == 'd' && v.as_i64().is_none() {
                    return Err(format!(
                        "format: %d needs a whole number, found {}",
                        describe(v)
                    ));
                }
                out.push_str(&text(v));
                next += 1;
            }
            other => {
                return Err(format!(
                    "format: `%{}` is not a verb; use %s, %d or %%",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    if next != args.len() {
        return Err(format!(
            "format: `{spec}` uses {} value(s), given {}",
            next - 1,
            args.len() - 1
        ));
    }
    Ok(Json::String(out))
}

fn cidr(v: &Json) -> Result<Ipv4Net, String> {
    let text = json_to_text(v);
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IPv4 CIDR block such as 10.0.0.0/16"))?;
    if net.addr() != net.network() {
        return Err(format!(
            "`{text}` has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn describe(v: &Json) -> &'static str {
    match v {
        Json::Null => "nothing (null)",
        Json::Bool(_) => "a boolean",
        Json::Number(n) if n.is_i64() => "a whole number",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, args: Json) -> Result<Json, String> {
        Func::by_name(name).unwrap().call(args.as_array().unwrap())
    }

    #[test]
    fn cidrsubnet_carves_numbered_subnets() {
        assert_eq!(
            call("cidrsubnet", json!(["10.0.0.0/16", 8, 0])).unwrap(),
            "10.0.0.0/24"
        );
        assert_eq!(
            call("cidrsubnet", json!(["10.0.0.0/16", 8, 12])).unwrap(),
            "10.0.12.0/24"
        );
        assert_eq!(
            call("cidrsubnet", json!(["10.0.0.0/16", 4, 15])).unwrap(),
            "10.0.240.0/20"
        );
        assert!(call("cidrsubnet", json!(["10.0.0.0/16", 8, 256]))
            .unwrap_err()
            .contains("out of range"));
        assert!(call("cidrsubnet", json!(["10.0.0.0/30", 8, 0]))
            .unwrap_err()
            .contains("/32"));
        assert!(call("cidrsubnet", json!(["10.0.0.1/16", 8, 0]))
            .unwrap_err()
            .contains("host bits"));
        assert!(call("cidrsubnet", json!(["10.0.0.0/16", "8", 0]))
            .unwrap_err()
            .contains("argument 2 of `cidrsubnet` must be a whole number"));
        assert_eq!(
            call("cidrhost", json!(["10.0.4.0/24", 5])).unwrap(),
            "10.0.4.5"
        );
    }

    #[test]
    fn join_lookup_format_and_friends() {
        assert_eq!(call("join", json!([",", ["a", "b", 3]])).unwrap(), "a,b,3");
        assert_eq!(call("lookup", json!([{"a": 1}, "a"])).unwrap(), 1);
        assert_eq!(call("lookup", json!([{"a": 1}, "b", 2])).unwrap(), 2);
        assert!(call("lookup", json!([{"a": 1}, "b"]))
            .unwrap_err()
            .contains("no key `b`"));
        assert_eq!(
            call("format", json!(["%s-%d-100%%", "db", 3])).unwrap(),
            "db-3-100%"
        );
        assert!(call("format", json!(["%s-%s", "a"])).is_err());
        assert!(call("format", json!(["%s", "a", "b"])).is_err());
        assert!(call("format", json!(["%d", "x"])).is_err());
        assert_eq!(call("length", json!([[1, 2]])).unwrap(), 2);
        assert_eq!(
            call("concat", json!([[1], [2, 3]])).unwrap(),
            json!([1, 2, 3])
        );
        assert_eq!(
            call("keys", json!([{"b": 1, "a": 2}])).unwrap(),
            json!(["a", "b"])
        );
        assert!(Func::Join.check_arity(3).unwrap_err().contains("takes 2"));
    }
}
