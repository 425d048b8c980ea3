#!/usr/bin/env python3
"""The local API server's stand-in for EKS's authenticator.

kube-apiserver asks this webhook (TokenReview, authentication.k8s.io/v1)
about every bearer token it does not know from its static token file. It
accepts the tokens `aws eks get-token` makes, and only for as long as EKS
does: `k8s-aws-v1.` and the base64url of a presigned STS GetCallerIdentity
URL that signs the `x-k8s-aws-id` header, refused once its X-Amz-Date is
older than the lifetime (900 s on EKS; RALPH_SIM_EKS_TOKEN_SECONDS here, so
tests can see a long wait outlive its token). Then the local EKS (moto, at
RALPH_SIM_AWS_ENDPOINTS: /moto-api/eks/authenticate) checks the signature
with the key's secret, finds the cluster the token was signed for, and
decides as EKS would: the endpoint's public ranges, the authentication mode,
the principal's access entry. Its access policies travel with the user (as
`extra`) to /authorize, the API server's authorization webhook, which
applies them the way EKS maps them to Kubernetes roles; everyone else (the
static admin token, the control plane) is left to the next authorizer.

    eks_authenticator.py PORT
"""

import base64
import datetime
import json
import os
import sys
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LIFETIME = float(os.environ.get("RALPH_SIM_EKS_TOKEN_SECONDS", "900"))
PREFIX = "k8s-aws-v1."
AWS_ENDPOINTS = [e for e in os.environ.get("RALPH_SIM_AWS_ENDPOINTS", "").split(",") if e]
POLICIES = "local.eks/policies"
CLUSTER = "local.eks/cluster"
READ = {"get", "list", "watch"}


def review(token, now):
    """(username, None) for a token EKS would take, else (None, reason)."""
    if not token.startswith(PREFIX):
        return None, "not an EKS token"
    body = token[len(PREFIX):]
    try:
        url = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    except Exception:
        return None, "the token is not base64url"
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or ""
    if parsed.scheme != "https" or not (host == "sts.amazonaws.com" or (host.startswith("sts.") and host.endswith(".amazonaws.com"))):
        return None, f"unexpected STS host {host!r}"
    query = {k.lower(): v for k, v in urllib.parse.parse_qsl(parsed.query)}
    if query.get("action") != "GetCallerIdentity":
        return None, "the presigned request is not GetCallerIdentity"
    if "x-k8s-aws-id" not in query.get("x-amz-signedheaders", "").split(";"):
        return None, "the token does not sign x-k8s-aws-id"
    if "x-amz-expires" not in query:
        return None, "X-Amz-Expires is missing"
    try:
        signed = datetime.datetime.strptime(query.get("x-amz-date", ""), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None, "X-Amz-Date is missing or malformed"
    age = (now - signed).total_seconds()
    if age > LIFETIME:
        return None, f"X-Amz-Date parameter is expired ({LIFETIME:g} second expiration; the token is {age:.0f} s old)"
    if age < -300:
        return None, "X-Amz-Date is in the future"
    reason = "no local AWS to ask (RALPH_SIM_AWS_ENDPOINTS is empty)"
    for endpoint in AWS_ENDPOINTS:
        try:
            ask = urllib.request.Request(endpoint + "/moto-api/eks/authenticate", method="POST",
                                         data=json.dumps({"url": url}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(ask, timeout=10) as r:
                answer = json.loads(r.read() or b"{}")
        except Exception as e:
            reason = f"the local AWS at {endpoint} did not answer: {e}"
            continue
        if answer.get("user"):
            return answer["user"], None
        reason = answer.get("reason") or "refused"
    return None, reason


def allows(policy, attrs):
    """Whether one EKS access policy ("Name|cluster" or "Name|ns:a,b") admits
    a request, as EKS maps them to the cluster-admin, admin, edit and view
    roles (approximated: the roles' verbs, and the secrets view leaves out)."""
    name, _, scope = policy.partition("|")
    namespace = attrs.get("namespace") or ""
    if scope != "cluster" and (not namespace or namespace not in scope[3:].split(",")):
        return False
    verb, group, resource = attrs.get("verb", ""), attrs.get("group", ""), attrs.get("resource", "")
    if name == "AmazonEKSClusterAdminPolicy":
        return True
    if name == "AmazonEKSAdminPolicy":
        return bool(namespace) or verb in READ
    if name == "AmazonEKSEditPolicy":
        if group == "rbac.authorization.k8s.io":
            return verb in READ
        return bool(namespace) or verb in READ
    if name == "AmazonEKSAdminViewPolicy":
        return verb in READ
    if name == "AmazonEKSViewPolicy":
        return verb in READ and resource != "secrets"
    return False


def authorize(spec):
    """(allowed, denied, reason) for a SubjectAccessReview spec."""
    extra = spec.get("extra") or {}
    if CLUSTER not in extra:
        return False, False, "not an EKS principal"  # no opinion
    cluster = (extra.get(CLUSTER) or ["?"])[0]
    if "nonResourceAttributes" in spec:
        return True, False, "discovery is open to every authenticated user"
    attrs = spec.get("resourceAttributes") or {}
    if attrs.get("resource") in ("selfsubjectaccessreviews", "selfsubjectrulesreviews") and attrs.get("verb") == "create":
        return True, False, "anyone may ask what they may do"
    for policy in extra.get(POLICIES) or []:
        if allows(policy, attrs):
            return True, False, f"EKS access policy {policy.split('|')[0]} on cluster {cluster}"
    what = "%s %s%s" % (attrs.get("verb", "?"), attrs.get("resource", "?"),
                        " in namespace " + attrs["namespace"] if attrs.get("namespace") else "")
    policies = ", ".join(extra.get(POLICIES) or []) or "none"
    return False, True, (f"{spec.get('user')} may not {what} on cluster {cluster}: its access entry's "
                         f"policies ({policies}) do not allow it")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_error(400)
            return
        if self.path.startswith("/authorize"):
            allowed, denied, reason = authorize(request.get("spec") or {})
            status = {"allowed": allowed, "reason": reason}
            if denied:
                status["denied"] = True
                print(f"denied: {reason}", file=sys.stderr, flush=True)
            kind = "SubjectAccessReview"
            default_version = "authorization.k8s.io/v1"
        else:
            token = (request.get("spec") or {}).get("token", "")
            user, reason = review(token, datetime.datetime.now(datetime.timezone.utc))
            status = {"authenticated": user is not None}
            if user:
                status["user"] = {
                    "username": user["username"], "uid": user["username"],
                    "groups": list(user.get("groups") or []) + ["system:authenticated"],
                    "extra": {CLUSTER: [user["cluster"]], POLICIES: list(user.get("policies") or [])},
                }
            else:
                status["error"] = reason
                print(f"refused a token: {reason}", file=sys.stderr, flush=True)
            kind = "TokenReview"
            default_version = "authentication.k8s.io/v1"
        answer = json.dumps({
            "apiVersion": request.get("apiVersion", default_version),
            "kind": kind,
            "status": status,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def main():
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()


if __name__ == "__main__":
    main()
