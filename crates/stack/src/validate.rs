//! Checks a loaded stack against the resource kinds: known fields, types,
//! values (CIDR syntax and containment, service name rules), references and
//! dependency cycles. Runs before any cloud call; reports every problem.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::diag::{Diagnostics, Span};
use super::expr::{Expr, SExpr};
use super::load::Partial;
use super::{Resource, Stack};
use ralph_core::model::kinds::{did_you_mean, Field, Ty};

/// The rules `validate` applies across resources (beyond each property's
/// own type and check), for the stack reference.
pub const RULES: &[&str] = &[
    "A reference names a resource the stack declares and an attribute its kind has; references form no cycle.",
    "A subnet's block lies inside its network's block, and siblings do not overlap.",
    "Two resources of one kind never claim the same cloud name (also through two uses of one component).",
    "An AWS subnet's availability zone is a zone of the stack's region (`cloud.aws.region`).",
    "An EKS cluster's subnets, when the stack declares them, span at least two availability zones.",
    "A GKE cluster's location is the region of its subnetwork, or a zone of that region.",
    "A Google Cloud subnetwork's secondary ranges lie outside its primary range and outside each other.",
    "A Kubernetes version is one the provider still supports, from the dated table in `support/kubernetes-versions.json`.",
    "The orchestrator's rollout can schedule on the stack's own nodes: replicas plus `max_surge` pods, one per node (the required anti-affinity), fit the nodes there are (the node groups' desired size, or their maximum where an autoscaler adds nodes: GKE's own, or a cluster-autoscaler or Karpenter among the stack's manifests); and one pod's CPU and memory requests fit one node's allocatable resources (`crates/core/src/model/capacity.rs`).",
    "`moved` entries lead to a declared address and do not rename one still declared; `import` names a declared resource.",
];

/// Every problem of a stack whose load found problems of its own: the
/// resources it left out (`partial`) are neither checked nor reported
/// missing, so one mistake is reported once.
pub fn validate_partial(stack: &Stack, partial: &Partial) -> Diagnostics {
    let mut d = Diagnostics::with_files(stack.files.clone());
    for r in stack.resources.values() {
        resource(stack, r, partial, &mut d);
    }
    for o in stack.outputs.values() {
        let mut refs = Vec::new();
        o.value.collect_references(&mut refs);
        for (reference, span) in refs {
            if partial.unloaded.contains(&reference.address) {
                continue;
            }
            check_reference(
                stack,
                None,
                &reference.address,
                &reference.attribute,
                span,
                &mut d,
            );
        }
    }
    within(stack, &mut d);
    one_cloud_name_each(stack, &mut d);
    zones(stack, &mut d);
    secondary_ranges(stack, &mut d);
    rollouts_fit(stack, &mut d);
    moved(stack, &mut d);
    for i in &stack.imports {
        if !stack.resources.contains_key(&i.to.value) {
            let hint = did_you_mean(&i.to.value, stack.resources.keys().map(String::as_str))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| "declare the resource under `resources`, then import it".into());
            d.error_help(
                i.to.span,
                format!(
                    "`import` names `{}`, which the stack does not declare",
                    i.to.value
                ),
                hint,
            );
        }
    }
    if let Err(cycle) = stack.graph() {
        let first = stack.resources.get(&cycle.members[0]);
        let span = first.map(|r| r.span).unwrap_or_default();
        d.error_help(
            span,
            format!("dependency cycle: {}", cycle.describe()),
            "break the cycle: remove a `depends_on` entry or a reference between these resources",
        );
    }
    d
}

fn resource(stack: &Stack, r: &Resource, partial: &Partial, d: &mut Diagnostics) {
    let kind = r.kind;
    // A misspelt property is one problem: its did-you-mean names the
    // property that is then not reported missing.
    let mut suggested = std::collections::BTreeSet::new();
    for (name, p) in &r.properties {
        match kind.field(name) {
            Some(f) => value(stack, r, f, &f.ty, &p.value, d),
            None if kind.attrs.iter().any(|a| a.name == name) => d.error_help(
                p.key_span,
                format!(
                    "`{name}` of {} is assigned by the cloud and cannot be set",
                    kind.kind
                ),
                format!(
                    "refer to it from other resources as `${{{}.{name}}}`",
                    r.address
                ),
            ),
            None => {
                let hint = match did_you_mean(name, kind.fields.iter().map(|f| f.name)) {
                    Some(s) => {
                        suggested.insert(s);
                        format!("did you mean `{s}`?")
                    }
                    None => format!(
                        "{} takes: {}",
                        kind.kind,
                        kind.fields
                            .iter()
                            .map(|f| f.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                d.error_help(
                    p.key_span,
                    format!(
                        "unknown property `{name}` for {} `{}`",
                        kind.kind, r.address
                    ),
                    hint,
                );
            }
        }
    }
    let incomplete = partial.incomplete.contains(&r.address);
    for f in kind
        .fields
        .iter()
        .filter(|f| f.required && f.default.is_none() && !incomplete)
        .filter(|f| !suggested.contains(f.name))
    {
        if !r.properties.contains_key(f.name) {
            d.error_help(
                r.span,
                format!(
                    "{} `{}` needs the property `{}`",
                    kind.kind, r.address, f.name
                ),
                format!("add `{}:` under `properties` ({})", f.name, f.doc),
            );
        }
    }
    if !kind.exactly_one_of.is_empty() && !incomplete {
        exactly_one(r, d);
    }
    ordered_pairs(r, d);
    for dep in &r.depends_on {
        if dep.value == r.address {
            d.error(dep.span, format!("`{}` depends on itself", r.address));
        } else if partial.unloaded.contains(&dep.value) {
        } else if !stack.resources.contains_key(&dep.value) {
            let hint = did_you_mean(&dep.value, stack.resources.keys().map(|s| s.as_str()))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| "list addresses of resources declared in this stack".into());
            d.error_help(
                dep.span,
                format!(
                    "`depends_on` names `{}`, which is not a resource in this stack",
                    dep.value
                ),
                hint,
            );
        }
    }
    for (reference, span) in r.references() {
        if partial.unloaded.contains(&reference.address) {
            continue;
        }
        check_reference(
            stack,
            Some(r),
            &reference.address,
            &reference.attribute,
            span,
            d,
        );
    }
}

/// Of the kind's `exactly_one_of` properties, exactly one is set.
fn exactly_one(r: &Resource, d: &mut Diagnostics) {
    let kind = r.kind;
    let set: Vec<&str> = kind
        .exactly_one_of
        .iter()
        .copied()
        .filter(|f| r.properties.contains_key(*f))
        .collect();
    if set.len() != 1 {
        let list = kind
            .exactly_one_of
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        let msg = if set.is_empty() {
            format!("{} `{}` needs one of {list}", kind.kind, r.address)
        } else {
            format!(
                "{} `{}` sets {}; only one of {list} may be set",
                kind.kind,
                r.address,
                set.join(" and ")
            )
        };
        d.error(r.span, msg);
    }
}

/// Relations the service states between two integer properties.
fn ordered_pairs(r: &Resource, d: &mut Diagnostics) {
    let kind = r.kind;
    for (low, high) in kind.ordered {
        // Numbers, or Kubernetes quantities (a CPU request and its limit).
        let magnitude = |v: &serde_json::Value| {
            v.as_f64()
                .or_else(|| {
                    v.as_str()
                        .and_then(ralph_core::model::kinds::checks::quantity_value)
                })
                .map(|m| (m, ralph_core::model::json_to_text(v)))
        };
        let literal = |name: &str| {
            r.properties
                .get(name)
                .and_then(|p| p.value.to_literal())
                .and_then(|v| magnitude(&v))
                .map(|v| (v, r.properties[name].value.span))
                .or_else(|| {
                    kind.field(name)
                        .and_then(|f| f.default_value())
                        .and_then(|v| magnitude(&v))
                        .map(|v| (v, r.span))
                })
        };
        if let (Some(((a_value, a), _)), Some(((b_value, b), span))) = (literal(low), literal(high))
        {
            if a_value > b_value {
                let at = literal(low).map(|x| x.1).unwrap_or(span);
                d.error_help(
                    at,
                    format!(
                        "`{low}` is {a}, more than `{high}` ({b}); {} requires {low} <= {high}",
                        kind.kind
                    ),
                    format!("lower `{low}` or raise `{high}`"),
                );
            }
        }
    }
}

fn check_reference(
    stack: &Stack,
    from: Option<&Resource>,
    address: &str,
    attribute: &str,
    span: Span,
    d: &mut Diagnostics,
) -> Option<Ty> {
    if from.is_some_and(|r| r.address == address) {
        d.error(span, format!("`{address}` refers to itself"));
        return None;
    }
    let Some(target) = stack.resources.get(address) else {
        let hint = did_you_mean(address, stack.resources.keys().map(|s| s.as_str()))
            .map(|s| format!("did you mean `${{{s}.{attribute}}}`?"))
            .unwrap_or_else(|| {
                "refer to a resource declared under `resources` (or to a variable as `${var.name}`)"
                    .into()
            });
        d.error_help(
            span,
            format!("reference to `{address}`, which is not a resource in this stack"),
            hint,
        );
        return None;
    };
    match target.kind.attribute_type(attribute) {
        Some(t) => Some(t),
        None => {
            let hint = match did_you_mean(attribute, target.kind.attribute_names()) {
                Some(s) => format!("did you mean `${{{address}.{s}}}`?"),
                None => format!(
                    "{} has: {}",
                    target.kind.kind,
                    target.kind.attribute_names().collect::<Vec<_>>().join(", ")
                ),
            };
            d.error_help(
                span,
                format!(
                    "{} `{address}` has no attribute `{attribute}`",
                    target.kind.kind
                ),
                hint,
            );
            None
        }
    }
}

fn value(stack: &Stack, r: &Resource, field: &Field, ty: &Ty, v: &SExpr, d: &mut Diagnostics) {
    if deferred(stack, field, ty, v, d) {
        return;
    }
    let problems_before = d.problems.len();
    let type_error = |d: &mut Diagnostics, help: Option<&str>| {
        let msg = format!(
            "`{}` expects {}, found {}",
            field.name,
            ty.describe(),
            describe_expr(&v.expr)
        );
        match help {
            Some(h) => d.error_help(v.span, msg, h),
            None => d.error(v.span, msg),
        }
    };
    match (ty, &v.expr) {
        (Ty::String | Ty::Version, Expr::Str(_)) => {}
        (Ty::String | Ty::Version, Expr::Int(_) | Expr::Float(_) | Expr::Bool(_)) => {
            type_error(d, Some("quote the value to make it a string"))
        }
        (Ty::Cidr, Expr::Str(_)) => cidr(v, d),
        (Ty::Bool, Expr::Bool(_)) => {}
        // Cloud APIs take 32-bit integers: a larger value would wrap.
        (Ty::Int, Expr::Int(n)) if i32::try_from(*n).is_err() => d.error_help(
            v.span,
            format!(
                "`{}` is {n}, which is out of range: the cloud APIs take integers from {} to {}",
                field.name,
                i32::MIN,
                i32::MAX
            ),
            "use a value in the range the property allows (see `ralph-deploy schema`)",
        ),
        (Ty::Int, Expr::Int(_)) => {}
        // A whole number too large for an integer arrives as a float or as
        // text: say so, not "found a string".
        (Ty::Int, Expr::Float(_) | Expr::Str(_))
            if v.literal_str()
                .map(|t| {
                    let digits = t.trim_start_matches('-');
                    !digits.is_empty()
                        && digits.chars().all(|c| c.is_ascii_digit())
                        && t.parse::<i64>().is_err()
                })
                .unwrap_or(
                    matches!(v.expr, Expr::Float(f) if f.fract() == 0.0 && f.abs() >= 9.2e18),
                ) =>
        {
            d.error_help(
                v.span,
                format!(
                    "`{}` is {}, which does not fit an integer",
                    field.name,
                    v.literal_str()
                        .map(|t| crate::diag::shorten(t, 40))
                        .unwrap_or_else(|| "too large".into())
                ),
                "use a value in the range the property allows (see `ralph-deploy schema`)",
            );
        }
        (Ty::Int, Expr::Float(f)) => d.error_help(
            v.span,
            format!("`{}` expects an integer, found {f}", field.name),
            "drop the fraction",
        ),
        (Ty::List(item) | Ty::Set(item), Expr::List(items)) => {
            for i in items {
                value(stack, r, field, item, i, d);
            }
        }
        (Ty::StringMap, Expr::Map(entries)) => {
            for (k, val) in entries {
                if !matches!(val.expr, Expr::Str(_)) {
                    d.error_help(
                        val.span,
                        format!(
                            "`{}.{}` must be a string, found {}",
                            field.name,
                            k.value,
                            describe_expr(&val.expr)
                        ),
                        "quote the value",
                    );
                }
            }
        }
        (Ty::Object(fields), Expr::Map(entries)) => object(stack, r, field, fields, v, entries, d),
        _ => {
            type_error(d, None);
            return;
        }
    }
    if d.problems.len() > problems_before {
        return;
    }
    field_check(field, ty, v, d);
}

/// A reference or a function call: known only at apply, so only its type
/// is checked here. True when `v` is one.
fn deferred(stack: &Stack, field: &Field, ty: &Ty, v: &SExpr, d: &mut Diagnostics) -> bool {
    if let Some(reference) = v.sole_reference() {
        // The referenced attribute's type must fit; its value is checked at apply.
        if let Some(target_ty) = stack
            .resources
            .get(&reference.address)
            .and_then(|t| t.kind.attribute_type(&reference.attribute))
        {
            if !ty.accepts(&target_ty) {
                d.error(
                    v.span,
                    format!(
                        "`{}` expects {}, but `{reference}` is {}",
                        field.name,
                        ty.describe(),
                        target_ty.describe()
                    ),
                );
            }
        }
        return true;
    }
    if let Expr::Call(f, _) = &v.expr {
        // Known only at apply time; a call giving text cannot fill a number.
        if !f.returns_string() || matches!(ty, Ty::String | Ty::Version | Ty::Cidr) {
            return true;
        }
        d.error(
            v.span,
            format!(
                "`{}` expects {}, but `{}` gives a string",
                field.name,
                ty.describe(),
                f.name()
            ),
        );
        return true;
    }
    false
}

/// A literal CIDR block: IPv4, with no host bits set.
fn cidr(v: &SExpr, d: &mut Diagnostics) {
    if let Some(text) = v.literal_str() {
        match text.parse::<Ipv4Net>() {
            Ok(net) if net.addr() != net.network() => d.error_help(
                v.span,
                format!("`{text}` has host bits set"),
                format!("did you mean `{}`?", net.trunc()),
            ),
            Ok(_) => {}
            Err(_) => d.error_help(
                v.span,
                format!("`{text}` is not an IPv4 CIDR block"),
                "write it as address/prefix, such as 10.0.1.0/24",
            ),
        }
    }
}

/// An object's entries: each a known field of the right type, and every
/// required field there.
fn object(
    stack: &Stack,
    r: &Resource,
    field: &Field,
    fields: &[Field],
    v: &SExpr,
    entries: &[(crate::Spanned<String>, SExpr)],
    d: &mut Diagnostics,
) {
    for (k, val) in entries {
        match fields.iter().find(|f| f.name == k.value) {
            Some(f) => value(stack, r, f, &f.ty, val, d),
            None => {
                let hint = match did_you_mean(&k.value, fields.iter().map(|f| f.name)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!(
                        "allowed: {}",
                        fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                    ),
                };
                d.error_help(
                    k.span,
                    format!("unknown field `{}` in `{}`", k.value, field.name),
                    hint,
                );
            }
        }
    }
    for f in fields.iter().filter(|f| f.required && f.default.is_none()) {
        if !entries.iter().any(|(k, _)| k.value == f.name) {
            d.error_help(
                v.span,
                format!("an entry of `{}` needs `{}`", field.name, f.name),
                f.doc,
            );
        }
    }
}

/// The field's own check on a literal value (a list's check on the list,
/// not on each item).
fn field_check(field: &Field, ty: &Ty, v: &SExpr, d: &mut Diagnostics) {
    if let (Some(check), Some(lit)) = (field.check, v.to_literal()) {
        if !matches!(ty, Ty::List(_) | Ty::Set(_)) || matches!(field.ty, Ty::List(_) | Ty::Set(_)) {
            if let Err(msg) = check(&lit) {
                // Say which property, unless the check already does.
                let msg =
                    if msg.contains(&format!("`{}`", field.name)) || msg.starts_with(field.name) {
                        msg
                    } else {
                        format!("`{}`: {msg}", field.name)
                    };
                d.error(v.span, msg);
            }
        }
    }
}

fn describe_expr(e: &Expr) -> &'static str {
    match e {
        Expr::Null => "nothing (null)",
        Expr::Bool(_) => "a boolean",
        Expr::Int(_) => "an integer",
        Expr::Float(_) => "a number",
        Expr::Str(_) => "a string",
        Expr::List(_) => "a list",
        Expr::Map(_) => "a mapping",
        Expr::Call(..) => "the result of a function",
    }
}

/// CIDR containment: a subnet inside its VPC, and no two siblings overlapping.
fn within(stack: &Stack, d: &mut Diagnostics) {
    // (parent address, field) -> [(child address, net, span)]
    let mut children: BTreeMap<(String, &'static str), Vec<(String, Ipv4Net, Span)>> =
        BTreeMap::new();
    for r in stack.resources.values() {
        for f in r.kind.fields {
            let Some((ref_field, parent_field)) = f.within else {
                continue;
            };
            let Some(p) = r.properties.get(f.name) else {
                continue;
            };
            let Some(net) = p
                .value
                .literal_str()
                .and_then(|s| s.parse::<Ipv4Net>().ok())
            else {
                continue;
            };
            let Some(parent_ref) = r
                .properties
                .get(ref_field)
                .and_then(|p| p.value.sole_reference())
            else {
                continue;
            };
            let Some(parent) = stack.resources.get(&parent_ref.address) else {
                continue;
            };
            let parent_net = parent
                .properties
                .get(parent_field)
                .and_then(|p| p.value.literal_str())
                .and_then(|s| s.parse::<Ipv4Net>().ok());
            if let Some(parent_net) = parent_net {
                if !parent_net.contains(&net) {
                    d.error_help(
                        p.value.span,
                        format!(
                            "`{net}` is not inside `{parent_net}`, the {parent_field} of `{}`",
                            parent.address
                        ),
                        format!("choose a block within {parent_net}"),
                    );
                    continue;
                }
            }
            children
                .entry((parent.address.clone(), f.name))
                .or_default()
                .push((r.address.clone(), net, p.value.span));
        }
    }
    for ((parent, _), list) in children {
        for (i, (a, na, _)) in list.iter().enumerate() {
            for (b, nb, span_b) in &list[i + 1..] {
                if na.contains(nb) || nb.contains(na) {
                    d.error_help(
                        *span_b,
                        format!("`{nb}` of `{b}` overlaps `{na}` of `{a}` (both in `{parent}`)"),
                        "give each one a block of its own",
                    );
                }
            }
        }
    }
}

/// `moved` entries: each must lead to something the stack declares, and
/// must not rename something the stack still declares.
/// Two resources of one kind whose names (the kind's `name_field`) are the
/// same literal would claim one cloud resource: the second create fails, or
/// worse, both addresses adopt the same thing. Caught here, at the second
/// one, with the first named (also when both come from uses of a component).
fn one_cloud_name_each(stack: &Stack, d: &mut Diagnostics) {
    let mut seen: std::collections::BTreeMap<(&str, String), &str> = Default::default();
    for r in stack.resources.values() {
        let Some(field) = r.kind.name_field else {
            continue;
        };
        let Some(p) = r.properties.get(field) else {
            continue;
        };
        let Some(name) = p
            .value
            .to_literal()
            .and_then(|v| v.as_str().map(str::to_string))
        else {
            continue;
        };
        match seen.entry((r.kind.kind, name.clone())) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(r.address.as_str());
            }
            std::collections::btree_map::Entry::Occupied(e) => d.error_help(
                p.value.span,
                format!(
                    "`{}` and `{}` would both be the {} named `{name}`: the cloud keeps one",
                    e.get(),
                    r.address,
                    r.kind.kind
                ),
                format!("give `{}` a `{field}` of its own", r.address),
            ),
        }
    }
}

/// The region an AWS availability zone name belongs to (`us-east-1a` ->
/// `us-east-1`; a Local Zone `us-east-1-bos-1a` -> `us-east-1`).
fn zone_region(zone: &str) -> String {
    let parts: Vec<&str> = zone.split('-').collect();
    if parts.len() >= 3 {
        let third = parts[2].trim_end_matches(|c: char| c.is_ascii_lowercase());
        format!("{}-{}-{third}", parts[0], parts[1])
    } else {
        zone.to_string()
    }
}

/// Where things run: an AWS subnet's zone lies in the stack's region, an
/// EKS cluster's subnets span two zones at least (EKS refuses fewer), and a
/// GKE cluster's location is its subnetwork's region or a zone of it.
fn zones(stack: &Stack, d: &mut Diagnostics) {
    let literal = |r: &Resource, field: &str| -> Option<(String, Span)> {
        let p = r.properties.get(field)?;
        let v = p.value.to_literal()?;
        Some((v.as_str()?.to_string(), p.value.span))
    };
    let aws_region = stack.cloud.aws.as_ref().and_then(|a| a.region.clone());
    let gcp_region = stack.cloud.gcp.as_ref().and_then(|g| g.region.clone());
    for r in stack.resources.values() {
        match r.kind.kind {
            "aws.subnet" => {
                let (Some(region), Some((zone, span))) =
                    (&aws_region, literal(r, "availability_zone"))
                else {
                    continue;
                };
                if zone_region(&zone) != *region {
                    d.error_help(
                        span,
                        format!(
                            "availability zone `{zone}` is in {}, and the stack's region (cloud.aws.region) is {region}",
                            zone_region(&zone)
                        ),
                        format!("use a zone of {region}, such as {region}a"),
                    );
                }
            }
            "aws.eks_cluster" => {
                let Some(p) = r.properties.get("subnet_ids") else {
                    continue;
                };
                let mut refs = Vec::new();
                p.value.collect_references(&mut refs);
                let Expr::List(items) = &p.value.expr else {
                    // `${private[*].id}`: one reference per subnet.
                    if refs.is_empty() {
                        continue;
                    }
                    check_eks_zones(stack, r, &refs, refs.len(), p.value.span, d);
                    continue;
                };
                check_eks_zones(stack, r, &refs, items.len(), p.value.span, d);
            }
            "gcp.gke_cluster" => {
                let location = literal(r, "location")
                    .map(|(l, _)| l)
                    .or_else(|| gcp_region.clone());
                let Some(location) = location else { continue };
                let Some(subnet_ref) = r
                    .properties
                    .get("subnetwork")
                    .and_then(|p| p.value.sole_reference())
                else {
                    continue;
                };
                let Some(subnet) = stack.resources.get(&subnet_ref.address) else {
                    continue;
                };
                let region = literal(subnet, "region")
                    .map(|(l, _)| l)
                    .or_else(|| gcp_region.clone());
                let Some(region) = region else { continue };
                let zone_of = |l: &str| {
                    l.strip_prefix(&format!("{region}-"))
                        .is_some_and(|z| z.len() == 1 && z.chars().all(|c| c.is_ascii_lowercase()))
                };
                if location != region && !zone_of(&location) {
                    let span = r
                        .properties
                        .get("location")
                        .map(|p| p.value.span)
                        .unwrap_or(r.span);
                    d.error_help(
                        span,
                        format!(
                            "the cluster's location `{location}` is outside {region}, the region of its subnetwork `{}`",
                            subnet.address
                        ),
                        format!("use {region} (a regional cluster) or one of its zones, such as {region}-b"),
                    );
                }
            }
            _ => {}
        }
    }
}

/// An EKS cluster's subnets, when all are the stack's own with known zones,
/// must span two zones at least.
fn check_eks_zones(
    stack: &Stack,
    r: &Resource,
    refs: &[(super::expr::Reference, Span)],
    listed: usize,
    span: Span,
    d: &mut Diagnostics,
) {
    let mut zones = std::collections::BTreeSet::new();
    for (reference, _) in refs {
        let Some(subnet) = stack.resources.get(&reference.address) else {
            return;
        };
        if subnet.kind.kind != "aws.subnet" || reference.attribute != "id" {
            return;
        }
        let Some(zone) = subnet
            .properties
            .get("availability_zone")
            .and_then(|p| p.value.to_literal())
            .and_then(|v| v.as_str().map(str::to_string))
        else {
            return;
        };
        zones.insert(zone);
    }
    // Every listed subnet is known (none given by id).
    if refs.len() != listed || zones.is_empty() {
        return;
    }
    if zones.len() < 2 {
        d.error_help(
            span,
            format!(
                "the subnets of `{}` are all in {}: EKS needs subnets in at least two availability zones",
                r.address,
                zones.iter().next().map(String::as_str).unwrap_or_default()
            ),
            "add a subnet in another zone of the region",
        );
    }
}

/// A GCP subnetwork's secondary ranges lie outside its primary range and
/// outside each other (Google refuses the subnetwork otherwise).
fn secondary_ranges(stack: &Stack, d: &mut Diagnostics) {
    for r in stack.resources.values() {
        if r.kind.kind != "gcp.subnetwork" {
            continue;
        }
        let primary = r
            .properties
            .get("ip_cidr_range")
            .and_then(|p| p.value.literal_str())
            .and_then(|s| s.parse::<Ipv4Net>().ok());
        let Some(Expr::List(items)) = r.properties.get("secondary_ranges").map(|p| &p.value.expr)
        else {
            continue;
        };
        let mut seen: Vec<(String, Ipv4Net)> = Vec::new();
        for item in items {
            let Some(v) = item.to_literal() else { continue };
            let name = v
                .get("range_name")
                .and_then(|n| n.as_str())
                .unwrap_or("?")
                .to_string();
            let Some(net) = v
                .get("ip_cidr_range")
                .and_then(|n| n.as_str())
                .and_then(|s| s.parse::<Ipv4Net>().ok())
            else {
                continue;
            };
            let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(b) || b.contains(a);
            if let Some(p) = primary.filter(|p| overlaps(p, &net)) {
                d.error_help(
                    item.span,
                    format!(
                        "secondary range `{name}` ({net}) overlaps the primary range {p} of `{}`",
                        r.address
                    ),
                    "give the secondary range a block outside the primary range",
                );
            } else if let Some((other, on)) = seen.iter().find(|(_, o)| overlaps(o, &net)) {
                d.error_help(
                    item.span,
                    format!("secondary range `{name}` ({net}) overlaps secondary range `{other}` ({on}) of `{}`", r.address),
                    "give each secondary range a block of its own",
                );
            }
            seen.push((name, net));
        }
    }
}

/// A property's value as the stack sets it or as the kind defaults it;
/// `None` when it is not known before the apply.
fn value_or_default(r: &Resource, name: &str) -> Option<serde_json::Value> {
    match r.properties.get(name) {
        Some(p) => p.value.to_literal(),
        None => r
            .kind
            .fields
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.default)
            .and_then(|d| serde_json::from_str(d).ok()),
    }
}

/// The nodes a stack makes for its workloads, as one pool.
struct Nodes {
    /// How many there are now (desired size, node count).
    now: i64,
    /// How many an autoscaler may add up to, where one runs.
    most: Option<i64>,
    /// Which node groups, for messages.
    names: Vec<String>,
    /// Each group's allocatable resources per node, where the type is known.
    shapes: Vec<(String, ralph_core::model::capacity::Allocatable)>,
}

fn stack_nodes(stack: &Stack) -> Option<Nodes> {
    use ralph_core::model::capacity::{allocatable, Provider};
    let int = |r: &Resource, f: &str| value_or_default(r, f).and_then(|v| v.as_i64());
    // An autoscaler the stack installs (EKS has none of its own).
    let eks_autoscaler = stack.resources.values().any(|r| {
        r.kind.kind == "kubernetes.manifests"
            && r.properties.values().any(|p| {
                p.value.to_literal().is_some_and(|v| {
                    let t = v.to_string();
                    t.contains("cluster-autoscaler") || t.contains("karpenter")
                })
            })
    });
    let gcp_region = stack.cloud.gcp.as_ref().and_then(|g| g.region.clone());
    let mut nodes = Nodes {
        now: 0,
        most: Some(0),
        names: Vec::new(),
        shapes: Vec::new(),
    };
    let mut any = false;
    for r in stack.resources.values() {
        let (now, most, machine, provider) = match r.kind.kind {
            "aws.eks_nodegroup" => {
                let machine = value_or_default(r, "instance_types")
                    .and_then(|v| v.get(0).and_then(|m| m.as_str().map(str::to_string)));
                let most = if eks_autoscaler {
                    int(r, "max_size")
                } else {
                    None
                };
                (int(r, "desired_size")?, most, machine, Provider::Eks)
            }
            "gcp.gke_node_pool" => {
                // A regional cluster's pool has its count in each of three
                // zones; GKE's own autoscaler works between min and max.
                let location = r.properties.get("cluster").and_then(|p| {
                    if let Some(reference) = p.value.sole_reference() {
                        let c = stack.resources.get(&reference.address)?;
                        c.properties
                            .get("location")
                            .and_then(|l| l.value.to_literal())
                            .and_then(|v| v.as_str().map(str::to_string))
                            .or_else(|| gcp_region.clone())
                    } else {
                        let path = p.value.to_literal()?.as_str()?.to_string();
                        path.split("/locations/")
                            .nth(1)
                            .and_then(|rest| rest.split('/').next())
                            .map(str::to_string)
                    }
                });
                let zones = match location {
                    Some(l) if l.split('-').count() >= 3 => 1, // a zone
                    Some(_) => 3,
                    None => 1,
                };
                let most = int(r, "max_nodes").map(|m| m * zones);
                let machine = value_or_default(r, "machine_type")
                    .and_then(|v| v.as_str().map(str::to_string));
                (int(r, "node_count")? * zones, most, machine, Provider::Gke)
            }
            _ => continue,
        };
        any = true;
        nodes.now += now;
        nodes.most = match (nodes.most, most) {
            (Some(a), Some(b)) => Some(a + b.max(now)),
            _ => None,
        };
        nodes.names.push(r.address.clone());
        if let Some(a) = machine.as_deref().and_then(|m| allocatable(provider, m)) {
            nodes.shapes.push((machine.unwrap_or_default(), a));
        }
    }
    any.then_some(nodes)
}

/// The orchestrator's rollout can schedule on the nodes the stack makes
/// (see RULES); a stack without node groups (an existing cluster) is not
/// checked.
fn rollouts_fit(stack: &Stack, d: &mut Diagnostics) {
    use ralph_core::model::capacity::show_memory;
    use ralph_core::model::kinds::checks::quantity_value;
    let Some(nodes) = stack_nodes(stack) else {
        return;
    };
    for r in stack.resources.values() {
        if r.kind.kind != "kubernetes.orchestrator" {
            continue;
        }
        let int = |f: &str| value_or_default(r, f).and_then(|v| v.as_i64());
        let span = |f: &str| r.properties.get(f).map(|p| p.value.span).unwrap_or(r.span);
        if let (Some(replicas), Some(surge)) = (int("replicas"), int("max_surge")) {
            let peak = replicas + surge;
            let (have, how) = match nodes.most {
                Some(most) if most > nodes.now => (most, "at most, as the autoscaler adds them"),
                _ => (nodes.now, "and no autoscaler adds more"),
            };
            if peak > have {
                d.error_help(
                    span("replicas"),
                    format!(
                        "`{}` cannot roll out: a rollout runs {replicas} replicas and {surge} extra pod(s) at once, each on a node of its own (the required anti-affinity), and {} make {have} node(s) {how}",
                        r.address,
                        nodes.names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
                    ),
                    format!(
                        "make {peak} nodes (the node group's desired size), install a cluster autoscaler, or lower `replicas` or `max_surge` (with `max_unavailable` 1, a rollout replaces pods in place)"
                    ),
                );
            }
        }
        // One pod must fit one node, on the largest node the stack makes.
        let Some((machine, biggest)) = nodes
            .shapes
            .iter()
            .max_by(|a, b| a.1.cpu.total_cmp(&b.1.cpu))
            .cloned()
        else {
            continue;
        };
        let quantity = |f: &str| {
            value_or_default(r, f)
                .and_then(|v| v.as_str().map(str::to_string))
                .and_then(|s| quantity_value(&s).map(|q| (s, q)))
        };
        if let Some((shown, cpu)) = quantity("cpu_request") {
            if cpu > biggest.cpu + 1e-9 {
                d.error_help(
                    span("cpu_request"),
                    format!(
                        "`{}` asks {shown} CPU per pod, and a {machine} node offers pods {:.2} (its cores less what the kubelet and system reserve): no pod could schedule",
                        r.address, biggest.cpu
                    ),
                    format!("ask at most {:.0}m, or use a larger machine type", (biggest.cpu * 1000.0).floor()),
                );
            }
        }
        if let Some((shown, memory)) = quantity("memory_request") {
            if memory > biggest.memory {
                d.error_help(
                    span("memory_request"),
                    format!(
                        "`{}` asks {shown} of memory per pod, and a {machine} node offers pods {}: no pod could schedule",
                        r.address,
                        show_memory(biggest.memory)
                    ),
                    "ask less, or use a larger machine type",
                );
            }
        }
    }
}

fn moved(stack: &Stack, d: &mut Diagnostics) {
    use ralph_core::model::address::is_under;
    let mut froms = std::collections::BTreeSet::new();
    for m in &stack.moved {
        let (from, to) = (&m.from.value, &m.to.value);
        if !froms.insert(from.clone()) {
            d.error(m.from.span, format!("`{from}` is moved twice"));
        }
        if from == to {
            d.error(m.to.span, format!("`{from}` is moved to itself"));
            continue;
        }
        // An instance key this environment's `for_each` lacks still names
        // something the stack declares (in another environment).
        let instance_of_declared = to.ends_with("\"]")
            && to.rfind("[\"").is_some_and(|i| {
                let base = format!("{}[\"", &to[..i]);
                stack.resources.keys().any(|a| a.starts_with(&base))
            });
        if !instance_of_declared && !stack.resources.keys().any(|a| is_under(a, to)) {
            let hint = did_you_mean(to, stack.resources.keys().map(String::as_str))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| {
                    "`to` names a resource (or component use) the stack declares".into()
                });
            d.error_help(
                m.to.span,
                format!("`moved` leads to `{to}`, which matches nothing in the stack"),
                hint,
            );
        }
        if stack.resources.keys().any(|a| is_under(a, from)) {
            d.error_help(
                m.from.span,
                format!("`moved` renames `{from}`, which the stack still declares"),
                "remove the old declaration, or the `moved` entry",
            );
        }
    }
}
