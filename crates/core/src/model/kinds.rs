//! Resource kind descriptors: the one description of a kind's properties that
//! validation, diffing (which attributes force a replacement) and the JSON
//! Schema all read. Drivers own a `KindSchema` each; the engine never names a
//! cloud, it only reads these tables.

use serde_json::Value as Json;

/// The type of a property. `Object` nests further fields; `Set` is a list
/// whose order carries no meaning (compared as a set when diffing).
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    String,
    Bool,
    Int,
    /// A string that must be an IPv4 CIDR block.
    Cidr,
    /// A version string; `15` matches a cloud-reported `15.4` (the cloud
    /// picks the minor version).
    Version,
    List(&'static Ty),
    Set(&'static Ty),
    /// A map from string keys to strings (tags, labels).
    StringMap,
    Object(&'static [Field]),
}

impl Ty {
    pub fn describe(&self) -> String {
        match self {
            Ty::String => "a string".into(),
            Ty::Bool => "a boolean (true or false)".into(),
            Ty::Int => "an integer".into(),
            Ty::Cidr => "an IPv4 CIDR block such as 10.0.0.0/16".into(),
            Ty::Version => "a version string such as \"15\" (quoted)".into(),
            Ty::List(t) | Ty::Set(t) => format!("a list of {}", t.describe_plural()),
            Ty::StringMap => "a map of strings".into(),
            Ty::Object(_) => "a mapping".into(),
        }
    }

    fn describe_plural(&self) -> String {
        match self {
            Ty::String => "strings".into(),
            Ty::Bool => "booleans".into(),
            Ty::Int => "integers".into(),
            Ty::Cidr => "CIDR blocks".into(),
            Ty::Object(_) => "mappings".into(),
            other => other.describe(),
        }
    }

    /// True when a reference to an attribute of type `other` may be used here.
    pub fn accepts(&self, other: &Ty) -> bool {
        matches!(
            (self, other),
            (
                Ty::String | Ty::Cidr | Ty::Version,
                Ty::String | Ty::Cidr | Ty::Version
            ) | (Ty::Bool, Ty::Bool)
                | (Ty::Int, Ty::Int)
                | (Ty::StringMap, Ty::StringMap)
                | (Ty::List(_) | Ty::Set(_), Ty::List(_) | Ty::Set(_))
        )
    }
}

/// A value check: returns a message saying what is wrong and what is expected.
pub type Check = fn(&Json) -> Result<(), String>;

/// One property of a kind.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    /// Changing this property cannot be done in place: the resource is replaced.
    pub replace: bool,
    pub doc: &'static str,
    /// Default used when the stack leaves the property out (a JSON literal).
    pub default: Option<&'static str>,
    pub check: Option<Check>,
    /// `Some((ref_field, parent_field))`: this CIDR must lie inside the CIDR held
    /// by `parent_field` of the resource that `ref_field` refers to, and must
    /// not overlap the CIDRs of siblings with the same parent.
    pub within: Option<(&'static str, &'static str)>,
    /// Attributes an in-place change of this property gives new values
    /// (a rotation renews `version_id`): the plan shows them as unknown,
    /// so what refers to them is planned to change too.
    pub renews: &'static [&'static str],
    /// A day-2 release (`deploy --image`, `rollback`) sets it too: the
    /// stack's value rolls out when the stack changes it, and a release
    /// made since stands over the value the stack still has.
    pub released: bool,
}

impl Field {
    pub const fn new(name: &'static str, ty: Ty, doc: &'static str) -> Field {
        Field {
            name,
            ty,
            required: false,
            replace: false,
            doc,
            default: None,
            check: None,
            within: None,
            renews: &[],
            released: false,
        }
    }
    /// A field the stack must give, fixed once the resource is made: a new
    /// value replaces the resource.
    pub const fn fixed(name: &'static str, ty: Ty, doc: &'static str) -> Field {
        Field::new(name, ty, doc).required().forces_replace()
    }
    /// A kind's `name`: the resource's name in its cloud ([`Field::fixed`]).
    pub const fn name(doc: &'static str) -> Field {
        Field::fixed("name", Ty::String, doc)
    }
    /// A Google Cloud kind's `labels`: the stack's labels besides the
    /// ownership labels.
    pub const fn labels() -> Field {
        Field::new(
            "labels",
            Ty::StringMap,
            "labels besides the ownership labels",
        )
        .default("{}")
    }
    /// An AWS kind's `tags`: the stack's tags besides the ownership tags,
    /// checked against AWS's tag limits.
    pub const fn tags() -> Field {
        Field::new("tags", Ty::StringMap, "tags besides the ownership tags")
            .default("{}")
            .check(checks::tags)
    }
    pub const fn required(mut self) -> Field {
        self.required = true;
        self
    }
    pub const fn released(mut self) -> Field {
        self.released = true;
        self
    }
    pub const fn forces_replace(mut self) -> Field {
        self.replace = true;
        self
    }
    pub const fn default(mut self, json: &'static str) -> Field {
        self.default = Some(json);
        self
    }
    pub const fn check(mut self, check: Check) -> Field {
        self.check = Some(check);
        self
    }
    pub const fn renews(mut self, attributes: &'static [&'static str]) -> Field {
        self.renews = attributes;
        self
    }
    pub const fn within(mut self, ref_field: &'static str, parent_field: &'static str) -> Field {
        self.within = Some((ref_field, parent_field));
        self
    }

    pub fn default_value(&self) -> Option<Json> {
        self.default.and_then(|d| serde_json::from_str(d).ok())
    }
}

/// An attribute the cloud assigns (an id, an ARN, an endpoint).
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Ty,
    pub doc: &'static str,
}

impl Attr {
    pub const fn new(name: &'static str, ty: Ty, doc: &'static str) -> Attr {
        Attr { name, ty, doc }
    }

    /// A string attribute, what most are (ids, ARNs, endpoints).
    pub const fn string(name: &'static str, doc: &'static str) -> Attr {
        Attr::new(name, Ty::String, doc)
    }
}

#[derive(Debug)]
pub struct KindSchema {
    /// `cloud.kind`, e.g. `aws.vpc`.
    pub kind: &'static str,
    pub doc: &'static str,
    /// The cloud service the kind's operations count against: its
    /// throttling limiter (one service throttling never slows another).
    pub service: &'static str,
    pub fields: &'static [Field],
    pub attrs: &'static [Attr],
    /// The kind carries the ownership tags, so refresh can list it by tag
    /// (the kinds with a `tags` property).
    pub taggable: bool,
    /// The property whose value is the cloud's identifier (a bucket name, a
    /// DB instance identifier), so refresh can look a resource up before the
    /// state knows it.
    pub name_field: Option<&'static str>,
    /// Exactly one of these properties must be set (empty: no such rule).
    pub exactly_one_of: &'static [&'static str],
    /// Pairs of integer properties where the first may not exceed the second
    /// (a nodegroup's `min_size` <= `desired_size` <= `max_size`).
    pub ordered: &'static [(&'static str, &'static str)],
}

/// The property that leaves a resource's name to the tool: at creation it
/// gets a name of its own under this prefix ([`generated_name`]), which the
/// state records and references read. A name the stack does not fix can
/// follow the resource: a failover on a cloud that renames nothing records
/// the promoted instance, under its own name, as the primary.
pub const NAME_PREFIX: &str = "name_prefix";

/// A new name under `prefix`: a hyphen and eight random lowercase hex
/// digits after it (`ralph-production-postgres-3f9a1c2b`).
pub fn generated_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..8])
}

/// A kind is described as `KindSchema::new(kind, service, doc)` and
/// builders for the rest, each empty or off unless called.
impl KindSchema {
    pub const fn new(kind: &'static str, service: &'static str, doc: &'static str) -> KindSchema {
        KindSchema {
            kind,
            doc,
            service,
            fields: &[],
            attrs: &[],
            taggable: false,
            name_field: None,
            exactly_one_of: &[],
            ordered: &[],
        }
    }

    /// The properties; a kind with [`Field::tags`] among them carries the
    /// ownership tags too (`taggable`).
    pub const fn fields(mut self, fields: &'static [Field]) -> KindSchema {
        self.fields = fields;
        let mut i = 0;
        while i < fields.len() {
            if matches!(fields[i].name.as_bytes(), b"tags") {
                self.taggable = true;
            }
            i += 1;
        }
        self
    }

    pub const fn attrs(mut self, attrs: &'static [Attr]) -> KindSchema {
        self.attrs = attrs;
        self
    }

    pub const fn name_field(mut self, field: &'static str) -> KindSchema {
        self.name_field = Some(field);
        self
    }

    pub const fn exactly_one_of(mut self, fields: &'static [&'static str]) -> KindSchema {
        self.exactly_one_of = fields;
        self
    }

    pub const fn ordered(mut self, pairs: &'static [(&'static str, &'static str)]) -> KindSchema {
        self.ordered = pairs;
        self
    }

    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The name field, when the kind can generate names (it has
    /// [`NAME_PREFIX`] as well).
    pub fn generates_names(&self) -> Option<&'static str> {
        self.name_field
            .filter(|_| self.field(NAME_PREFIX).is_some())
    }

    /// Type of `name` as seen by a reference: a property or an assigned attribute.
    pub fn attribute_type(&self, name: &str) -> Option<Ty> {
        self.field(name)
            .map(|f| f.ty)
            .or_else(|| self.attrs.iter().find(|a| a.name == name).map(|a| a.ty))
    }

    pub fn attribute_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.fields
            .iter()
            .map(|f| f.name)
            .chain(self.attrs.iter().map(|a| a.name))
    }
}

/// The closest candidate to `word`, if close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // A plausible typo has about the candidate's length; skipping the rest
    // also keeps a hostile 100k-character word from costing seconds.
    let n = word.chars().count();
    candidates
        .into_iter()
        .filter(|c| {
            let m = c.chars().count();
            n.abs_diff(m) <= (m / 2).max(3)
        })
        .map(|c| {
            (
                strsim::jaro_winkler(word, c)
                    .max(strsim::normalized_damerau_levenshtein(word, c) + 0.15),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

pub mod checks {
    //! Reusable value checks for `Field::check`.
    use serde_json::Value as Json;

    /// A check's answer: fine when `ok`, else what `why` says.
    pub fn require(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(why())
        }
    }

    /// A number that must be one of the values a service takes (retention
    /// periods, rate windows): the error lists them with their `unit`.
    pub fn one_of(v: &Json, allowed: &[i64], what: &str, unit: &str) -> Result<(), String> {
        match v.as_i64() {
            Some(n) if allowed.contains(&n) => Ok(()),
            _ => Err(format!(
                "{v} is not {what}: one of {} {unit}",
                allowed
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// A word that must be one of `choices` (an API's enum): the error
    /// names the field (`what`), what was given and what is taken.
    pub fn choice(v: &Json, choices: &[&str], what: &str) -> Result<(), String> {
        match v.as_str() {
            Some(s) if choices.contains(&s) => Ok(()),
            other => {
                let taken = match choices {
                    [a, b] => format!("{a} or {b}"),
                    _ => format!("one of {}", choices.join(", ")),
                };
                Err(format!("{what} {} is not {taken}", super::shown(other)))
            }
        }
    }

    /// A name of lowercase letters, digits and hyphens, starting with a
    /// letter and not ending with a hyphen, its length in `len` (the rule
    /// of RDS, ElastiCache, Compute and IAM names; some also forbid `--`).
    pub fn lowercase_name(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
        len.contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    /// `s` is `len` characters long, each an ASCII letter, a digit or one of
    /// `also`.
    pub fn name_of(s: &str, len: std::ops::RangeInclusive<usize>, also: &str) -> bool {
        len.contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || also.contains(c))
    }

    pub fn port(v: &Json) -> Result<(), String> {
        match v.as_i64() {
            Some(p) if (-1..=65535).contains(&p) => Ok(()),
            _ => Err("a port must be between 0 and 65535 (or -1 for all)".into()),
        }
    }

    pub fn availability_zone(v: &Json) -> Result<(), String> {
        let s = v.as_str().unwrap_or_default();
        let ok = s.len() >= 6
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && s.chars().last().is_some_and(|c| c.is_ascii_lowercase())
            && s.split('-').count() >= 3;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "`{s}` is not an availability zone name; expected a region followed by a letter, such as us-east-1a"
            ))
        }
    }

    /// EC2 tag rules: keys 1-128 characters, values up to 256, no `aws:` prefix,
    /// and the tool's own `ralph-deploy:` prefix is reserved.
    pub fn tags(v: &Json) -> Result<(), String> {
        let Some(map) = v.as_object() else {
            return Ok(());
        };
        if map.len() > 40 {
            return Err(format!(
                "{} tags given; AWS allows 50 per resource and ralph-deploy reserves 4",
                map.len()
            ));
        }
        for (k, val) in map {
            if k.is_empty() || k.chars().count() > 128 {
                return Err(format!("tag key `{k}` must be 1 to 128 characters long"));
            }
            if k.to_ascii_lowercase().starts_with("aws:") {
                return Err(format!(
                    "tag key `{k}` uses the prefix `aws:`, which AWS reserves"
                ));
            }
            if k.starts_with(super::super::OWNER_TAG_PREFIX) {
                return Err(format!(
                    "tag key `{k}` uses the prefix `{}`, which ralph-deploy reserves for ownership tags",
                    super::super::OWNER_TAG_PREFIX
                ));
            }
            if val.as_str().is_some_and(|s| s.chars().count() > 256) {
                return Err(format!(
                    "the value of tag `{k}` is longer than 256 characters"
                ));
            }
        }
        Ok(())
    }

    /// EC2 security group names: up to 255 ASCII characters, not starting with `sg-`.
    pub fn security_group_name(v: &Json) -> Result<(), String> {
        let s = v.as_str().unwrap_or_default();
        if s.is_empty() || s.len() > 255 || !s.is_ascii() {
            return Err("a security group name must be 1 to 255 ASCII characters".into());
        }
        if s.to_ascii_lowercase().starts_with("sg-") {
            return Err(format!(
                "security group name `{s}` must not start with `sg-`"
            ));
        }
        Ok(())
    }

    /// EC2 security group and rule descriptions (VPC): up to 255 characters
    /// of letters, digits, spaces and `._-:/()#,@[]+=&;{}!$*`.
    pub fn security_group_description(v: &Json) -> Result<(), String> {
        let s = v.as_str().unwrap_or_default();
        let n = s.chars().count();
        if n > 255 {
            return Err(format!(
                "the description is {n} characters long; EC2 allows at most 255"
            ));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(*c)))
        {
            return Err(format!(
                "the description contains `{}`; EC2 allows only letters, digits, spaces and ._-:/()#,@[]+=&;{{}}!$*",
                bad.escape_default()
            ));
        }
        Ok(())
    }

    /// An integer within `LO..=HI` (the range the service documents).
    pub fn range<const LO: i64, const HI: i64>(v: &Json) -> Result<(), String> {
        match v.as_i64() {
            Some(n) if (LO..=HI).contains(&n) => Ok(()),
            Some(n) => Err(format!("{n} is out of range: expected {LO} to {HI}")),
            None => Ok(()),
        }
    }

    /// A TCP port: 1 to 65535.
    pub fn tcp_port(v: &Json) -> Result<(), String> {
        range::<1, 65535>(v)
    }

    /// The value of a Kubernetes quantity ("500m", "2", "4Gi", "1.5e3"),
    /// in its base unit; None when it is not one.
    pub fn quantity_value(s: &str) -> Option<f64> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(s.len());
        let (num, suffix) = s.split_at(split);
        if num.is_empty() || num.starts_with('.') && num.len() == 1 {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        let factor = match suffix {
            "" => 1.0,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse::<i32>().ok()?),
            _ => return None,
        };
        (n >= 0.0).then_some(n * factor)
    }

    /// A Kubernetes resource quantity, such as 500m, 2 or 4Gi.
    pub fn quantity(v: &Json) -> Result<(), String> {
        match v.as_str() {
            Some(s) if quantity_value(s).is_some() => Ok(()),
            _ => Err(format!(
                "{} is not a Kubernetes quantity such as 500m, 2 or 4Gi",
                v.as_str()
                    .map(|s| format!("`{s}`"))
                    .unwrap_or_else(|| v.to_string())
            )),
        }
    }

    /// A cron schedule of five fields (minute hour day-of-month month
    /// day-of-week), as a CronJob takes it: numbers in range, `*`, lists,
    /// ranges and steps, month and day names, or a macro such as @daily.
    pub fn cron(v: &Json) -> Result<(), String> {
        let s = v.as_str().unwrap_or_default().trim();
        if matches!(
            s,
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight" | "@hourly"
        ) {
            return Ok(());
        }
        let fields: Vec<&str> = s.split_whitespace().collect();
        let bad = |why: String| {
            Err(format!(
                "`{s}` is not a cron schedule: {why} (five fields: minute hour day-of-month month day-of-week, such as \"15 3 * * *\")"
            ))
        };
        if fields.len() != 5 {
            return bad(format!("{} field(s)", fields.len()));
        }
        const MONTHS: [&str; 12] = [
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let limits: [(&str, u32, u32, &[&str]); 5] = [
            ("minute", 0, 59, &[]),
            ("hour", 0, 23, &[]),
            ("day of month", 1, 31, &[]),
            ("month", 1, 12, &MONTHS),
            ("day of week", 0, 7, &DAYS),
        ];
        for (field, (name, lo, hi, names)) in fields.iter().zip(limits) {
            for part in field.split(',') {
                let (range, step) = part.split_once('/').unwrap_or((part, ""));
                if !step.is_empty() && !step.parse::<u32>().is_ok_and(|n| n > 0) {
                    return bad(format!("the {name} step `{step}` is not a positive number"));
                }
                if range == "*" || range == "?" && (name == "day of month" || name == "day of week")
                {
                    continue;
                }
                let value = |t: &str| -> Option<u32> {
                    let lower = t.to_ascii_lowercase();
                    names
                        .iter()
                        .position(|n| *n == lower)
                        .map(|i| i as u32 + if lo == 1 { 1 } else { 0 })
                        .or_else(|| t.parse().ok())
                };
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                match (value(a), value(b)) {
                    (Some(x), Some(y)) if x >= lo && y <= hi && x <= y => {}
                    _ => return bad(format!("the {name} `{part}` is outside {lo}-{hi}")),
                }
            }
        }
        Ok(())
    }

    /// Firewall/security group rules: each rule's port range runs upwards.
    pub fn rule_port_ranges(v: &Json) -> Result<(), String> {
        for (i, rule) in v.as_array().into_iter().flatten().enumerate() {
            let from = rule.get("from_port").and_then(Json::as_i64);
            let to = rule.get("to_port").and_then(Json::as_i64);
            if let (Some(f), Some(t)) = (from, to) {
                if f > t {
                    return Err(format!(
                        "rule {} runs from port {f} down to {t}: `from_port` must not be above `to_port`",
                        i + 1
                    ));
                }
            }
        }
        Ok(())
    }

    /// Ranges that may reach a cluster's public API endpoint: the
    /// documentation ranges (RFC 5737), which the shipped stacks use as a
    /// placeholder, must be replaced by the team's own.
    pub fn no_placeholder_ranges(v: &Json) -> Result<(), String> {
        const PLACEHOLDERS: [&str; 3] = ["192.0.2.", "198.51.100.", "203.0.113."];
        for r in v.as_array().into_iter().flatten().filter_map(Json::as_str) {
            if PLACEHOLDERS.iter().any(|p| r.starts_with(p)) {
                return Err(format!(
                    "`{r}` is a documentation range, the shipped stacks' placeholder: put the ranges your team and CI reach the cluster's API from (an office or VPN range, your CI runners' ranges), or 0.0.0.0/0 to leave it open on purpose"
                ));
            }
        }
        Ok(())
    }

    /// A percentage: 1 to 100.
    pub fn percent(v: &Json) -> Result<(), String> {
        range::<1, 100>(v)
    }

    pub fn ip_protocol(v: &Json) -> Result<(), String> {
        match v.as_str().unwrap_or_default() {
            "tcp" | "udp" | "icmp" | "-1" | "all" => Ok(()),
            other => Err(format!(
                "protocol `{other}` is not one of tcp, udp, icmp, all (-1)"
            )),
        }
    }
}

/// A value a check refused, as people read it: `X` in backticks, or
/// "nothing" when it is missing (never Rust's `Some("X")`).
pub fn shown(v: Option<&str>) -> String {
    match v {
        Some(s) => format!("`{s}`"),
        None => "nothing".to_string(),
    }
}

#[cfg(test)]
mod value_check_tests {
    use super::checks::{choice, cron, lowercase_name, quantity, quantity_value};
    use serde_json::json;

    #[test]
    fn choices_name_the_field_and_what_it_takes() {
        assert!(choice(&json!("SPOT"), &["ON_DEMAND", "SPOT"], "capacity_type").is_ok());
        assert_eq!(
            choice(&json!("spot"), &["ON_DEMAND", "SPOT"], "capacity_type").unwrap_err(),
            "capacity_type `spot` is not ON_DEMAND or SPOT"
        );
        assert_eq!(
            choice(&json!(3), &["A", "B", "C"], "mode").unwrap_err(),
            "mode nothing is not one of A, B, C"
        );
    }

    #[test]
    fn lowercase_names() {
        assert!(lowercase_name("prod-db-1", 1..=63));
        for bad in ["", "1db", "db-", "Db", "db_1"] {
            assert!(!lowercase_name(bad, 1..=63), "{bad}");
        }
        assert!(!lowercase_name("abcde", 6..=30));
        assert!(!lowercase_name(&"a".repeat(41), 1..=40));
    }

    #[test]
    fn kubernetes_quantities() {
        assert_eq!(quantity_value("500m"), Some(0.5));
        assert_eq!(quantity_value("4Gi"), Some(4.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity_value("1.5"), Some(1.5));
        assert_eq!(quantity_value("1e3"), Some(1000.0));
        for bad in ["two", "", "4GB", "-1", "m"] {
            assert!(quantity(&json!(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_schedules() {
        for good in [
            "15 3 * * *",
            "*/5 * * * *",
            "0 0 1 jan,jul *",
            "0 9 * * mon-fri",
            "@daily",
            "0 0 * * 7",
        ] {
            assert!(cron(&json!(good)).is_ok(), "{good}");
        }
        for bad in [
            "61 3 * * *",
            "* * *",
            "0 24 * * *",
            "0 0 0 * *",
            "0 0 * 13 *",
            "*/0 * * * *",
            "5-1 * * * *",
            "daily",
        ] {
            assert!(cron(&json!(bad)).is_err(), "{bad}");
        }
    }
}
