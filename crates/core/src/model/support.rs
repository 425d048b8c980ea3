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

const TABLE: &str = include_str!("../../../../support/kubernetes-versions.json");

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

// ------------------------------------------------------------ data stores

const STORE_TABLE: &str = include_str!("../../../../support/store-versions.json");

/// The managed data stores whose major versions the store table dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    RdsPostgres,
    CloudSqlPostgres,
    ElastiCacheRedis,
}

impl Store {
    pub fn label(self) -> &'static str {
        match self {
            Store::RdsPostgres => "Amazon RDS for PostgreSQL",
            Store::CloudSqlPostgres => "Cloud SQL for PostgreSQL",
            Store::ElastiCacheRedis => "Amazon ElastiCache for Redis OSS",
        }
    }

    pub fn engine(self) -> &'static str {
        match self {
            Store::RdsPostgres | Store::CloudSqlPostgres => "PostgreSQL",
            Store::ElastiCacheRedis => "Redis OSS",
        }
    }

    fn table(self) -> &'static StoreTable {
        let t = store_tables();
        match self {
            Store::RdsPostgres => &t.rds_postgres,
            Store::CloudSqlPostgres => &t.cloudsql_postgres,
            Store::ElastiCacheRedis => &t.elasticache_redis,
        }
    }

    /// The major version of a version as a stack writes it: "15", "15.7"
    /// (RDS), "POSTGRES_15", "POSTGRES_9_6" (Cloud SQL), "7.1", "6.x",
    /// "4.0.10" (ElastiCache). None: not a version of this store.
    pub fn major_of(self, version: &str) -> Option<String> {
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        let parts: Vec<&str> = match self {
            Store::CloudSqlPostgres => version.strip_prefix("POSTGRES_")?.split('_').collect(),
            _ => version.split('.').collect(),
        };
        let major = *parts.first()?;
        if !digits(major) {
            return None;
        }
        // Before PostgreSQL 10 the major version had two parts (9.6).
        let two_part = self != Store::ElastiCacheRedis && major.parse::<u32>().ok()? < 10;
        match parts.get(1) {
            Some(minor) if two_part && digits(minor) => Some(format!("{major}.{minor}")),
            _ if two_part => None,
            _ => Some(major.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StoreWindow {
    pub end_of_standard: NaiveDate,
    pub end_of_support: NaiveDate,
}

#[derive(Deserialize)]
struct StoreTable {
    versions: std::collections::BTreeMap<String, StoreWindow>,
    /// Majors offered with no end published yet.
    #[serde(default)]
    undated: Vec<String>,
}

#[derive(Deserialize)]
struct StoreTables {
    as_of: NaiveDate,
    rds_postgres: StoreTable,
    cloudsql_postgres: StoreTable,
    elasticache_redis: StoreTable,
}

fn store_tables() -> &'static StoreTables {
    static T: OnceLock<StoreTables> = OnceLock::new();
    T.get_or_init(|| {
        serde_json::from_str(STORE_TABLE)
            .expect("support/store-versions.json is checked by a unit test")
    })
}

/// The date the store table's calendars were read.
pub fn stores_as_of() -> NaiveDate {
    store_tables().as_of
}

/// Where a store's major version stands on a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSupport<'t> {
    /// In standard support, or newer than the table: nothing to say.
    Supported,
    /// In standard support, which ends on the window's date.
    StandardEnds(&'t StoreWindow),
    /// In the provider's charged extended support, until the window's end.
    Extended(&'t StoreWindow),
    /// Past all support (None: older than every version the table lists).
    Ended(Option<&'t StoreWindow>),
}

/// How far ahead an ending support window is worth a warning.
pub const WARNING_DAYS: i64 = 90;

/// Where `major` of `store` stands on `day`.
pub fn store_support(store: Store, major: &str, day: NaiveDate) -> StoreSupport<'static> {
    let t = store.table();
    let Some(w) = t.versions.get(major) else {
        let oldest = t.versions.keys().map(|k| minor_number(k)).min();
        let older = oldest.is_some_and(|o| minor_number(major) < o);
        return if older && !t.undated.iter().any(|u| u == major) {
            StoreSupport::Ended(None)
        } else {
            StoreSupport::Supported
        };
    };
    if day >= w.end_of_support {
        StoreSupport::Ended(Some(w))
    } else if day >= w.end_of_standard {
        StoreSupport::Extended(w)
    } else if (w.end_of_standard - day).num_days() <= WARNING_DAYS {
        StoreSupport::StandardEnds(w)
    } else {
        StoreSupport::Supported
    }
}

/// The majors of `store` in standard support on `day`, oldest first (those
/// with no end published included).
pub fn store_offered(store: Store, day: NaiveDate) -> Vec<&'static str> {
    let t = store.table();
    let mut v: Vec<&'static str> = t
        .versions
        .iter()
        .filter(|(_, w)| day < w.end_of_standard)
        .map(|(k, _)| k.as_str())
        .chain(t.undated.iter().map(String::as_str))
        .collect();
    v.sort_by_key(|s| minor_number(s));
    v
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
    fn the_store_table_parses_and_reads_each_stores_versions() {
        for s in [
            Store::RdsPostgres,
            Store::CloudSqlPostgres,
            Store::ElastiCacheRedis,
        ] {
            for w in s.table().versions.values() {
                assert!(w.end_of_standard < w.end_of_support);
            }
        }
        let day = d("2026-12-06");
        assert_eq!(Store::RdsPostgres.major_of("15.7").as_deref(), Some("15"));
        assert_eq!(
            Store::RdsPostgres.major_of("9.6.22").as_deref(),
            Some("9.6")
        );
        assert_eq!(
            Store::CloudSqlPostgres.major_of("POSTGRES_9_6").as_deref(),
            Some("9.6")
        );
        assert_eq!(Store::CloudSqlPostgres.major_of("MYSQL_8_0"), None);
        assert_eq!(
            Store::ElastiCacheRedis.major_of("6.x").as_deref(),
            Some("6")
        );
        assert_eq!(
            store_support(Store::RdsPostgres, "15", day),
            StoreSupport::Supported
        );
        assert!(matches!(
            store_support(Store::RdsPostgres, "13", day),
            StoreSupport::Extended(_)
        ));
        assert!(matches!(
            store_support(Store::ElastiCacheRedis, "6", day),
            StoreSupport::StandardEnds(_)
        ));
        assert!(matches!(
            store_support(Store::CloudSqlPostgres, "12", d("2028-02-01")),
            StoreSupport::Ended(Some(_))
        ));
        // Older than every row: past support; newer, or undated: the provider's.
        assert_eq!(
            store_support(Store::RdsPostgres, "9.6", day),
            StoreSupport::Ended(None)
        );
        assert_eq!(
            store_support(Store::RdsPostgres, "18", day),
            StoreSupport::Supported
        );
        assert_eq!(
            store_support(Store::ElastiCacheRedis, "7", day),
            StoreSupport::Supported
        );
        assert_eq!(store_offered(Store::ElastiCacheRedis, day), vec!["6", "7"]);
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
