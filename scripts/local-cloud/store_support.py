"""The managed stores' support windows, from the repository's dated table
(support/store-versions.json, the one `ralph-deploy check` reads), so the
local clouds refuse to create a PostgreSQL or Redis major version past all of
its provider's support, as RDS, Cloud SQL and ElastiCache do."""

import datetime as dt
import json
import os

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "support", "store-versions.json")


def _numbers(major):
    return tuple(int(p) for p in major.split("."))


def major_of(store, version):
    """The major of a version as the provider's API takes it ("15.7",
    "POSTGRES_9_6", "6.2"), or None."""
    version = str(version or "")
    if store == "cloudsql_postgres":
        if not version.startswith("POSTGRES_"):
            return None
        parts = version[len("POSTGRES_"):].split("_")
    else:
        parts = version.split(".")
    if not parts[0].isdigit():
        return None
    if store != "elasticache_redis" and int(parts[0]) < 10:
        return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else None
    return parts[0]


def refusal(store, version, today=None):
    """Why the provider would refuse to create `version` today (past the end
    of its extended support, or older than every version it lists), or None."""
    major = major_of(store, version)
    if major is None:
        return None
    with open(TABLE) as f:
        table = json.load(f)[store]
    today = today or dt.date.today().isoformat()
    window = table["versions"].get(major)
    if window is not None:
        if today >= window["end_of_support"]:
            return f"major version {major} reached its end of support on {window['end_of_support']}"
        return None
    if major in table.get("undated", []):
        return None
    if all(_numbers(major) < _numbers(k) for k in table["versions"]):
        return f"major version {major} is no longer offered"
    return None
