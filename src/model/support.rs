//! Support windows: which Kubernetes minor versions a provider still offers,
//! from the dated table in `support/kubernetes-versions.json` (the same file
//! the local cloud reads, so the stand-ins refuse what the table says the
//! providers refuse).
//!
//! A version the table does not know is not refused here: a table is older
//! than the provider's newest release, and the provider's own answer at
//! create time is the authority for those.

use std::sync::OnceLock;

use chrono::NaiveDate;
use serde::Deserialize;

const TABLE: &str = include_str!("../../support/kubernetes-versions.json");

/// The providers the table covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Eks,
    Gke,
}

impl Provider {
    pub fn label(self) -> &'static str {
        match self {
            Provider::Eks => "Amazon EKS",
            Provider::Gke => "GKE",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Window {
    pub released: NaiveDate,
    pub end_of_standard: NaiveDate,
    pub end_of_support: NaiveDate,
}

#[derive(Deserialize)]
struct ProviderTable {
    versions: std::collections::BTreeMap<String, Window>,
}

#[derive(Deserialize)]
struct Table {
    as_of: NaiveDate,
    eks: ProviderTable,
    gke: ProviderTable,
}

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| {
        serde_json::from_str(TABLE)
            .expect("support/kubernetes-versions.json is checked by a unit test")
    })
}

/// The date the table's calendars were read.
pub fn as_of() -> NaiveDate {
    table().as_of
}

/// The window of `minor` ("1.33") at `provider`, if the table knows it.
pub fn window(provider: Provider, minor: &str) -> Option<&'static Window> {
    let t = table();
    let p = match provider {
        Provider::Eks => &t.eks,
        Provider::Gke => &t.gke,
    };
    p.versions.get(minor)
}

/// The minor versions the table says `provider` offers on `day`, oldest first.
pub fn offered(provider: Provider, day: NaiveDate) -> Vec<&'static str> {
    let t = table();
    let p = match provider {
        Provider::Eks => &t.eks,
        Provider::Gke => &t.gke,
    };
    let mut v: Vec<&'static str> = p
        .versions
        .iter()
        .filter(|(_, w)| w.released <= day && day < w.end_of_support)
        .map(|(k, _)| k.as_str())
        .collect();
    v.sort_by_key(|s| minor_number(s));
    v
}

fn minor_number(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The minor part of a version as written in a stack ("1.33", "1.33.5",
/// "1.33.5-gke.100" all give "1.33").
pub fn minor_of(version: &str) -> Option<String> {
    let mut parts = version.split(['.', '-']);
    let major = parts.next()?;
    let minor = parts.next()?;
    if major.is_empty()
        || minor.is_empty()
        || !major
            .chars()
            .chain(minor.chars())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    Some(format!("{major}.{minor}"))
}

/// Refuses a version whose support at `provider` ended before `day`, with
/// the date it ended and the versions offered instead.
pub fn check(provider: Provider, version: &str, day: NaiveDate) -> Result<(), String> {
    let Some(minor) = minor_of(version) else {
        return Ok(());
    };
    let Some(w) = window(provider, &minor) else {
        return Ok(());
    };
    if day >= w.end_of_support {
        let offered = offered(provider, day);
        let instead = if offered.is_empty() {
            String::new()
        } else {
            format!("; choose one of {}", offered.join(", "))
        };
        return Err(format!(
            "Kubernetes {minor} is past its end of support at {} ({}), so it can no longer be created{instead} \
             (support/kubernetes-versions.json, calendars as of {})",
            provider.label(),
            w.end_of_support,
            as_of()
        ));
    }
    Ok(())
}

/// Today, in UTC.
pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn the_table_parses_and_is_ordered() {
        for p in [Provider::Eks, Provider::Gke] {
            for v in offered(p, as_of()) {
                let w = window(p, v).unwrap();
                assert!(
                    w.released < w.end_of_standard && w.end_of_standard <= w.end_of_support,
                    "{v}"
                );
            }
        }
    }

    #[test]
    fn versions_past_their_end_are_refused_with_the_date_and_what_to_choose() {
        let e = check(Provider::Eks, "1.28", d("2026-12-04")).unwrap_err();
        assert!(e.contains("2025-11-26") && e.contains("1.35"), "{e}");
        assert!(
            check(Provider::Eks, "1.34", d("2026-12-04")).is_ok(),
            "extended support still creates"
        );
        assert!(check(Provider::Gke, "1.34", d("2026-12-04")).is_err());
        assert!(check(Provider::Gke, "1.35.2-gke.100", d("2026-12-04")).is_ok());
        // A version newer than the table is the provider's to judge.
        assert!(check(Provider::Eks, "1.37", d("2026-12-04")).is_ok());
        assert_eq!(offered(Provider::Gke, d("2026-12-04")), vec!["1.35"]);
    }
}
