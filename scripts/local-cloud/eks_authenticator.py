#!/usr/bin/env python3
"""The local API server's stand-in for EKS's authenticator.

kube-apiserver asks this webhook (TokenReview, authentication.k8s.io/v1)
about every bearer token it does not know from its static token file. It
accepts the tokens `aws eks get-token` makes, and only for as long as EKS
does: `k8s-aws-v1.` and the base64url of a presigned STS GetCallerIdentity
URL that signs the `x-k8s-aws-id` header, refused once its X-Amz-Date is
older than the lifetime (900 s on EKS; RALPH_SIM_EKS_TOKEN_SECONDS here, so
tests can see a long wait outlive its token). The signature itself is not
replayed to STS: moto accepts any credentials.

    eks_authenticator.py PORT
"""

import base64
import datetime
import json
import os
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LIFETIME = float(os.environ.get("RALPH_SIM_EKS_TOKEN_SECONDS", "900"))
PREFIX = "k8s-aws-v1."


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
    access_key = query.get("x-amz-credential", "").split("/")[0] or "unknown"
    return f"arn:aws:iam::123456789012:user/{access_key}", None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_error(400)
            return
        token = (request.get("spec") or {}).get("token", "")
        user, reason = review(token, datetime.datetime.now(datetime.timezone.utc))
        status = {"authenticated": user is not None}
        if user:
            status["user"] = {"username": user, "uid": user, "groups": ["system:authenticated"]}
        else:
            status["error"] = reason
            print(f"refused a token: {reason}", file=sys.stderr, flush=True)
        answer = json.dumps({
            "apiVersion": request.get("apiVersion", "authentication.k8s.io/v1"),
            "kind": "TokenReview",
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
