//! `postgres.role`: a login role whose password lives in a secret store.
//!
//! The tool reads the password from the secret at apply time and sets it on
//! the role as a SCRAM-SHA-256 verifier computed here, so the password never
//! travels in an SQL statement (where `log_statement` would write it to the
//! server's log) and never reaches the state. The secret's version id is
//! written, in the same transaction, as the role's comment: refresh reads it
//! back, so a rotation (a new version), a password set by hand, or an apply
//! killed before the password was set all show in the plan as a change of
//! `password_version`.

use serde_json::{Map, Value as Json};
use sqlx::Connection;

use super::{connect, describe_target};
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

/// What the comment on a role starts with; the version id follows.
const COMMENT_PREFIX: &str = "ralph-deploy password version: ";

fn role_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    checks::require(ok && !s.starts_with("pg_"), || {
        format!(
            "`{s}` is not a role name this tool manages: lower-case letters, digits and `_`, \
             starting with a letter or `_`, at most 63, not starting with `pg_`"
        )
    })
}

fn search_path(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = s.is_empty()
        || s.split(", ").all(|p| {
            !p.is_empty()
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
    checks::require(ok, || {
        format!(
            "`{s}` is not a search_path this tool sets: schema names (lower-case letters, digits, `_`) separated by `, `"
        )
    })
}

static SCHEMA: KindSchema = KindSchema::new("postgres.role", "postgres", "A login role whose password is kept in a secret store and set by the tool (rotated when the secret gets a new version).")
    .fields(&super::with_connection_fields![
        Field::name("the role's name, such as ralph_app")
            .check(role_name),
        Field::new("password_secret", Ty::String, "the secret holding its password: a Secrets Manager ARN (`#key` picks a JSON key) or `env:VARIABLE`")
            .check(ralph_core::driver::secret_value::secret_source),
        Field::new("password_version", Ty::String, "the secret's version, such as `${db_password.version_id}`: a new version sets the new password"),
        Field::new("login", Ty::Bool, "the role may log in").default("true"),
        Field::new("member_of", Ty::Set(&Ty::String), "roles whose privileges it inherits, such as the schema's ralph_app (one login role per environment on a shared server)").default("[]"),
        Field::new("search_path", Ty::String, "its search_path in this database, such as `ralph, public`").default("\"\"").check(search_path),
        Field::new("iam_auth", Ty::Bool, "IAM database authentication (RDS): the role is granted rds_iam and has no password").default("false"),
    ])
    .attrs(&[Attr::string("id", "host:port/role")]);

pub struct Role;

fn id_of(props: &Map<String, Json>) -> String {
    let target = describe_target(props);
    let host = target.split('/').next().unwrap_or_default();
    format!(
        "{host}/{}",
        props.get("name").and_then(Json::as_str).unwrap_or_default()
    )
}

/// `"name"`, for SQL; names are checked by `role_name`, quoting is belt and braces.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, for SQL.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// What the database says about one role, or None when it does not exist.
async fn observe(cx: &Context, props: &Map<String, Json>) -> Result<Option<Observed>, DriverError> {
    let name = props.get("name").and_then(Json::as_str).unwrap_or_default();
    let pool = connect(cx, props).await?;
    let row: Option<(bool, Vec<String>, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT r.rolcanlogin,
                ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                      WHERE m.member = r.oid ORDER BY 1),
                shobj_description(r.oid, 'pg_authid'),
                (SELECT substr(c, length('search_path=') + 1)
                   FROM pg_db_role_setting s, unnest(s.setconfig) c
                  WHERE s.setrole = r.oid
                    AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND c LIKE 'search_path=%')
           FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(name)
    .fetch_optional(&pool)
    .await
    .map_err(|e| DriverError::new(format!("reading role {name}: {e}")))?;
    pool.close().await;
    let Some((login, mut groups, comment, search_path)) = row else {
        return Ok(None);
    };
    let iam = groups.iter().any(|g| g == "rds_iam");
    groups.retain(|g| g != "rds_iam");
    let version = comment
        .as_deref()
        .and_then(|c| c.strip_prefix(COMMENT_PREFIX))
        .map(|v| Json::String(v.to_string()))
        .unwrap_or(Json::Null);
    let id = id_of(props);
    // Where it lives, so that delete can reach it from what refresh saw.
    let mut attrs: Map<String, Json> = props
        .iter()
        .filter(|(k, _)| super::CONNECTION_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    attrs.insert("id".into(), Json::String(id.clone()));
    attrs.insert("name".into(), Json::String(name.to_string()));
    attrs.insert("login".into(), Json::Bool(login));
    attrs.insert("iam_auth".into(), Json::Bool(iam));
    attrs.insert(
        "member_of".into(),
        Json::Array(groups.into_iter().map(Json::String).collect()),
    );
    attrs.insert(
        "search_path".into(),
        Json::String(search_path.unwrap_or_default()),
    );
    attrs.insert("password_version".into(), version);
    Ok(Some(Observed {
        address: None,
        owner: None,
        id,
        attrs,
    }))
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802,
/// RFC 7677; the format of PostgreSQL's `pg_authid.rolpassword`), with a
/// fresh salt. Sending the verifier instead of the password is what psql's
/// `\password` does.
pub fn scram_verifier(password: &str) -> Result<String, DriverError> {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    const ITERATIONS: u32 = 4096;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, ITERATIONS, &mut salted);
    let hmac = |key: &[u8], msg: &[u8]| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .map_err(|e| DriverError::new(format!("computing the password verifier: {e}")))?;
        m.update(msg);
        Ok::<_, DriverError>(m.finalize().into_bytes())
    };
    let client_key = hmac(&salted, b"Client Key")?;
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key")?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    Ok(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        b64(&salt),
        b64(&stored_key),
        b64(&server_key)
    ))
}

/// The role's password, read from its `password_secret` (an IAM role has none).
async fn password_of(
    cx: &Context,
    want: &Desired<'_>,
    name: &str,
    iam: bool,
) -> Result<Option<String>, DriverError> {
    Ok(match (iam, want.str("password_secret").filter(|s| !s.is_empty())) {
        (true, Some(_)) => {
            return Err(DriverError::new(
                "`iam_auth` and `password_secret` exclude each other: an rds_iam role cannot log in with a password",
            ))
        }
        (false, Some(src)) => {
            let (value, _) = crate::read_secret_source(
                cx,
                &format!("the password of role {name}"),
                src,
            )
            .await?;
            Some(value)
        }
        _ => None,
    })
}

/// The role's group memberships (`member_of`), granted and revoked to match.
async fn member_of(
    conn: &mut sqlx::PgConnection,
    want: &Desired<'_>,
    name: &str,
) -> Result<(), sqlx::Error> {
    let role = ident(name);
    let want_groups: Vec<&str> = want
        .props
        .get("member_of")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .collect();
    let have_groups: Vec<String> = sqlx::query_scalar(
        "SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
          JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1 AND g.rolname <> 'rds_iam'",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    for g in &want_groups {
        if !have_groups.iter().any(|h| h == g) {
            sqlx::query(&format!("GRANT {} TO {role}", ident(g)))
                .execute(&mut *conn)
                .await?;
        }
    }
    for g in have_groups
        .iter()
        .filter(|h| !want_groups.contains(&h.as_str()))
    {
        sqlx::query(&format!("REVOKE {} FROM {role}", ident(g)))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Creates the role when missing and brings it to `want` in one
/// transaction: login, IAM membership, password and the version comment.
async fn converge(cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
    let name = want.required_str("name")?;
    let iam = want.bool("iam_auth").unwrap_or(false);
    let login = want.bool("login").unwrap_or(true);
    let password = password_of(cx, want, name, iam).await?;
    let version = want.str("password_version").unwrap_or_default();
    let pool = connect(cx, want.props).await?;
    let fail = |e: sqlx::Error| DriverError::new(format!("setting up role {name}: {e}"));
    let mut conn = pool.acquire().await.map_err(fail)?;
    let mut tx = conn.begin().await.map_err(fail)?;
    let role = ident(name);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(fail)?;
    if !exists {
        sqlx::query(&format!(
            "CREATE ROLE {role} NOSUPERUSER NOCREATEDB NOCREATEROLE"
        ))
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    }
    let login_sql = if login { "LOGIN" } else { "NOLOGIN" };
    sqlx::query(&format!("ALTER ROLE {role} {login_sql}"))
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    if iam {
        sqlx::query(&format!("GRANT rds_iam TO {role}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                DriverError::new(format!(
                    "granting rds_iam to {name}: {e} (IAM database authentication needs an RDS database with it enabled)"
                ))
            })?;
    }
    member_of(&mut tx, want, name).await.map_err(fail)?;
    // Per database, as the migrations set it for ralph_app: a role's
    // settings are not inherited by its members.
    let search_path = want.str("search_path").unwrap_or_default();
    let setting = if search_path.is_empty() {
        "RESET search_path".to_string()
    } else {
        let schemas: Vec<String> = search_path.split(", ").map(ident).collect();
        format!("SET search_path = {}", schemas.join(", "))
    };
    sqlx::query(&format!(
        "DO $$ BEGIN EXECUTE format({}, {}, current_database()); END $$",
        literal(&format!("ALTER ROLE %I IN DATABASE %I {setting}")),
        literal(name)
    ))
    .execute(&mut *tx)
    .await
    .map_err(fail)?;
    if let Some(p) = &password {
        // A verifier, not the password: it is a literal of base64 and `$:`,
        // checked here so that nothing can end the literal.
        let verifier = scram_verifier(p)?;
        debug_assert!(!verifier.contains('\''));
        sqlx::query(&format!("ALTER ROLE {role} PASSWORD '{verifier}'"))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    let comment = format!("{COMMENT_PREFIX}{version}").replace('\'', "''");
    sqlx::query(&format!("COMMENT ON ROLE {role} IS '{comment}'"))
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    drop(conn);
    pool.close().await;
    observe(cx, want.props).await?.ok_or_else(|| {
        DriverError::new(format!("role {name} is missing right after it was set up"))
    })
}

#[async_trait::async_trait]
impl Driver for Role {
    fn roles(&self) -> &'static [ralph_core::driver::capability::Role] {
        &[ralph_core::driver::capability::Role::DatabaseLogin]
    }

    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let mut out = Vec::new();
        for k in known.iter().filter(|k| !k.inputs.is_empty()) {
            if let Some(mut o) = observe(cx, &k.inputs).await? {
                if !k.id.is_empty() {
                    o.id = k.id.clone();
                }
                out.push(o);
            }
        }
        Ok(out)
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        converge(cx, want).await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, .. } = u;
        converge(cx, want).await
    }

    /// The role stays (the schema's grants name it, and other databases on
    /// the server may use it) but can no longer log in: its password is
    /// removed and its login taken away.
    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let Some(name) = d.have.attrs.get("name").and_then(Json::as_str) else {
            return Ok(());
        };
        // When the server cannot be reached any more (a destroy that takes
        // the database and its credentials with it), there is no login left
        // to take away; say so rather than keep the rest of a destroy waiting.
        let pool = match connect(cx, &d.have.attrs).await {
            Ok(pool) => pool,
            Err(e) => {
                cx.reporter.report(ralph_core::events::Event::Warning {
                    message: format!(
                        "role {name} was not disabled: {}. If its database outlives this run, disable it with ALTER ROLE {name} NOLOGIN",
                        e.message
                    ),
                });
                return Ok(());
            }
        };
        let result = sqlx::query(&format!("ALTER ROLE {} NOLOGIN PASSWORD NULL", ident(name)))
            .execute(&pool)
            .await;
        pool.close().await;
        match result {
            Ok(_) => Ok(()),
            // 42704: undefined_object, the role is gone already.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42704") => Ok(()),
            Err(e) => Err(DriverError::new(format!("disabling role {name}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_has_postgres_format_and_fresh_salt() {
        let a = scram_verifier("pässword'\"").unwrap();
        let b = scram_verifier("pässword'\"").unwrap();
        assert_ne!(a, b, "each verifier has its own salt");
        let rest = a.strip_prefix("SCRAM-SHA-256$4096:").expect(&a);
        let (salt, keys) = rest.split_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        use base64::Engine as _;
        let d = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(d(salt).len(), 16);
        assert_eq!(d(stored).len(), 32);
        assert_eq!(d(server).len(), 32);
        assert!(!a.contains('\''));
    }

    #[test]
    fn role_names_are_checked() {
        assert!(role_name(&Json::from("ralph_app")).is_ok());
        for bad in ["", "Ralph", "1x", "pg_monitor", "a-b", "x\"; DROP"] {
            assert!(role_name(&Json::from(bad)).is_err(), "{bad}");
        }
    }
}
